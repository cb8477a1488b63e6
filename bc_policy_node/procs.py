"""Start the graph's nodes as real processes (CLI and process-level tests; no rclpy here).

The same `graph.NodeSpec`s feed the launch files, so what CI starts here is what
`ros2 launch` starts on a robot.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .graph import NodeSpec, config_path


def executable_path(name: str) -> List[str]:
    """Command prefix of an installed executable (lib/bc_policy_node/<name>)."""
    try:
        from ament_index_python.packages import get_package_prefix
        exe = Path(get_package_prefix("bc_policy_node")) / "lib" / "bc_policy_node" / name
        if exe.is_file():
            return [str(exe)]
    except Exception:
        pass
    found = shutil.which(name)
    if found:
        return [found]
    # Not installed: run the module directly from the source tree.
    return [sys.executable, "-m", f"bc_policy_node.nodes.{name}"]


_FLOW_SPECIAL = set(':,[]{}#&*!|>%@`"\'')


def _param_arg(value, in_list: bool = False) -> str:
    """A `-p name:=value` value (rcl parses it as YAML). Strings inside a list are quoted when
    they hold a YAML flow indicator (e.g. the bridge's cameras 'overhead:96x96': unquoted, rcl
    refuses the whole command line); strings already quoted are passed as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_param_arg(v, True) for v in value) + "]"
    if isinstance(value, str):
        if not value:
            return "''"
        if in_list and value[0] not in "\"'" and _FLOW_SPECIAL & set(value):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return value
    return repr(value)


def ros_args(spec: NodeSpec, extra: Optional[Dict[str, object]] = None) -> List[str]:
    args = ["--ros-args", "-r", f"__node:={spec.name}"]
    if spec.param_file:
        path = config_path(spec.param_file)
        if path.is_file():
            args += ["--params-file", str(path)]
    for k, v in {**spec.parameters, **(extra or {})}.items():
        args += ["-p", f"{k}:={_param_arg(v)}"]
    for a, b in spec.remappings:
        args += ["-r", f"{a}:={b}"]
    return args


def default_stop_signals() -> None:
    """preexec_fn of every node process: SIGINT and SIGTERM back to their default action.

    A process that starts with a signal ignored keeps it ignored across exec, and Python
    installs its KeyboardInterrupt handler only over SIG_DFL. A test run or `bc-policy collect`
    started with SIGINT ignored (`cmd &` in a script, nohup wrappers) would hand that to every
    node, and `stop()`'s SIGINT - the clean shutdown that finalizes an open bag - would be lost.
    (`restore_signals=True` only covers SIGPIPE/SIGXFZ/SIGXFSZ.) It runs between fork and
    exec while the parent may have DDS threads: keep it to these two sigaction calls.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class NodeProcess:
    """One node in its own process (own session, default SIGINT/SIGTERM whatever the parent
    ignores); stdout/stderr go to a log file."""

    def __init__(self, spec: NodeSpec, log_dir: Path, extra_params: Optional[Dict[str, object]] = None,
                 env: Optional[Dict[str, str]] = None):
        self.spec = spec
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec.name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ if env is None else env)
        full_env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        full_env["PYTHONUNBUFFERED"] = "1"
        self.cmd = executable_path(spec.executable) + ros_args(spec, extra_params)
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True, preexec_fn=default_stop_signals)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT (clean shutdown), `timeout` s; then SIGTERM, 3 s; then SIGKILL, 3 s. Returns
        the exit code (negative: killed by that signal), or None if even SIGKILL did not reap
        it within 3 s (e.g. stuck in the kernel); never blocks longer than timeout + 6 s."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        return self.proc.returncode

    def kill9(self, timeout: float = 10.0) -> Optional[int]:
        """SIGKILL (a crash), reaped within `timeout` s. Returns the exit code or None."""
        self.proc.kill()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.proc.returncode


class Graph:
    """A set of node processes started together and stopped in reverse order."""

    def __init__(self, specs: Iterable[NodeSpec], log_dir: Path, extra_params: Optional[Dict[str, Dict]] = None):
        self.procs: Dict[str, NodeProcess] = {}
        extra_params = extra_params or {}
        try:
            for s in specs:
                self.procs[s.name] = NodeProcess(s, log_dir, extra_params.get(s.name))
        except Exception:
            self.stop()
            raise

    def __getitem__(self, name: str) -> NodeProcess:
        return self.procs[name]

    def check_alive(self) -> None:
        dead = [n for n, p in self.procs.items() if not p.alive()]
        if dead:
            details = "\n".join(f"--- {n} (exit {self.procs[n].proc.returncode}):\n{self.procs[n].log()[-3000:]}"
                                for n in dead)
            raise RuntimeError(f"node process(es) died: {dead}\n{details}")

    def stop(self) -> Dict[str, int]:
        return {n: p.stop() for n, p in reversed(list(self.procs.items()))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
