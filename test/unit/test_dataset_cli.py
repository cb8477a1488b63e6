"""`bc-policy dataset ...` end to end on real bags (no ROS): every action through the CLI parser."""
import numpy as np
import yaml

from bc_policy_node.cli import main as cli
from bc_policy_node.core.data import bagread
from bc_policy_node.core.data.bagio import EpisodeBagWriter
from bc_policy_node.core.data.episodes import Dataset
from bc_policy_node.pipeline.dataset_cli import parse_indices

from test_dataset_builder import CMD, TOPICS, contract, cmd, lockstep_bag  # noqa: E402


def recorded(path, n, episode_id, spec):
    """A bag as the recorder node writes it: the contract stored in episode.yaml."""
    return lockstep_bag(path, n=n, meta={"episode_id": episode_id, "contract": {"spec": spec}})


def test_every_action_through_the_cli(tmp_path, capsys):
    spec = contract().to_dict()
    bags = tmp_path / "bags"
    for i, n in enumerate((30, 40, 50)):
        recorded(bags / f"episode_{i:06d}_seed_{i}", n, i, spec)
    w = EpisodeBagWriter(bags / "episode_000003_seed_3", TOPICS, {"episode_id": 3, "contract": {"spec": spec}})
    w.write(CMD, {"data": cmd(0)}, 1)
    w.flush()
    w._file.close()                                          # a crash: needs recovery

    assert cli(["dataset", "info", str(bags)]) == 0
    out = capsys.readouterr().out
    assert "episode_000002_seed_2" in out and "needs recovery" in out and "50.0/50" in out

    assert cli(["dataset", "build", str(bags), "--out", str(tmp_path / "ds")]) == 0   # contract from the bags
    out = capsys.readouterr().out
    assert "included 3, excluded 1" in out and "needs recovery" in out
    ds = Dataset.load(tmp_path / "ds")
    assert [len(e) for e in ds.episodes] == [30, 40, 50]

    assert cli(["dataset", "recover", str(bags)]) == 0
    assert "1 needed recovery" in capsys.readouterr().out
    assert not bagread.needs_recovery(bags / "episode_000003_seed_3")
    assert yaml.safe_load((bags / "episode_000003_seed_3" / "episode.yaml").read_text())["complete"] is False

    assert cli(["dataset", "delete", str(tmp_path / "ds"), "--episodes", "0,2", "--out", str(tmp_path / "d1")]) == 0
    assert [len(e) for e in Dataset.load(tmp_path / "d1").episodes] == [40]
    assert cli(["dataset", "merge", str(tmp_path / "ds"), str(tmp_path / "d1"), "--out", str(tmp_path / "m")]) == 0
    assert Dataset.load(tmp_path / "m").num_frames == 120 + 40
    assert cli(["dataset", "plot", str(tmp_path / "m"), "--episodes", "1-2", "--out", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["episode_0001.png", "episode_0002.png"]
    assert cli(["dataset", "export-lerobot", str(tmp_path / "m"), "--out", str(tmp_path / "lr")]) == 0
    assert len(list((tmp_path / "lr" / "data").rglob("*.parquet"))) == 1     # v3.0: episodes share a file
    assert (tmp_path / "lr" / "meta" / "episodes" / "chunk-000" / "file-000.parquet").is_file()
    capsys.readouterr()

    # bags are moved aside, never destroyed by the CLI
    assert cli(["dataset", "delete", str(bags), "--episodes", "1"]) == 0
    assert not (bags / "episode_000001_seed_1").exists()
    assert (bags / ".trash" / "episode_000001_seed_1" / "episode.yaml").is_file()
    assert len(bagread.find_bags([bags])) == 3

    # errors: one line, exit 1
    assert cli(["dataset", "build", str(bags)]) == 1
    assert cli(["dataset", "plot", str(bags)]) == 1
    other = contract(control_rate_hz=25.0).to_dict()
    recorded(bags / "episode_000009_seed_9", 10, 9, other)
    assert cli(["dataset", "build", str(bags), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "different contracts" in err and "--contract" in err and "--out" in err


def test_parse_indices():
    assert parse_indices("0,3, 5-7") == [0, 3, 5, 6, 7] and parse_indices(None) == []
    assert np.array_equal(parse_indices("2"), [2])
