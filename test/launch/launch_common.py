"""Shared pieces of the launch_pytest tests: include a real launch file, record process exits."""
from pathlib import Path

import launch
import launch_pytest
from launch.actions import IncludeLaunchDescription, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource

LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"


def include(name: str, exits: dict, **arguments) -> launch.LaunchDescription:
    """launch/<name>.launch.py with `arguments`; every process exit lands in `exits`."""
    return include_many([(name, arguments)], exits)


def include_many(files, exits: dict) -> launch.LaunchDescription:
    """Several launch files [(name, arguments), ...] in one description, exits recorded."""
    def on_exit(event, _context):
        exits[event.action.name] = event.returncode
    return launch.LaunchDescription(
        [RegisterEventHandler(OnProcessExit(on_exit=on_exit))]
        + [IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_DIR / f"{name}.launch.py")),
                                    launch_arguments={k: str(v) for k, v in args.items()}.items())
           for name, args in files]
        + [launch_pytest.actions.ReadyToTest()])
