"""The command line: expected errors are one clear line with a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def recstream(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--broker", "localhost:9092", "topics", "create"], "broker url must look like kafka://host:port"),
        (["--config", "/nonexistent.toml", "topics", "create"], "config file not found"),
        (["--store", "/nonexistent/store", "profile", "42"], "no store at /nonexistent/store"),
        (["--broker", "kafka://127.0.0.1:1", "tail", "--timeout", "1"], ""),
    ],
)
def test_errors_are_one_line(args, needle):
    out = recstream(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]


def test_fit_hybrid_outside_leave_last_out_is_a_usage_error():
    out = recstream("replay", "--dataset", "ml-100k", "--protocol", "prequential", "--fit-hybrid")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "Error: --fit-hybrid needs the leave-last-out protocol" in out.stderr


def test_malformed_event_file_names_the_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "1", "item_id": "2", "ts": 1}\n{broken\n')
    out = recstream("--broker", "kafka://127.0.0.1:1", "publish", str(events))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{events}:2:" in out.stderr and out.stderr.strip().count("\n") == 0


def test_help_lists_every_command():
    out = recstream("--help")
    assert out.returncode == 0
    for command in ("broker", "worker", "catalog", "publish", "tail", "profile", "demo", "replay", "topics", "encoders", "store"):
        assert command in out.stdout


def test_tune_with_a_split_before_all_events_is_one_clear_line(tmp_path):
    from click.testing import CliRunner

    from stream.cli import cli

    result = CliRunner().invoke(cli, ["encoders", "tune", "--dataset", "ml-100k", "--until", "1990-01-01T00:00:00Z",
                                      "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "no events before --until" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_the_demo_says_when_the_worker_fell_behind_its_publish_rate():
    from stream.demo import pace_note

    assert pace_note(2000, 1995) is None and pace_note(2000, 1850) is None  # kept up
    assert pace_note(0, 500) is None  # unpaced: nothing to fall behind
    note = pace_note(2000, 1586)
    assert "1,586 of the 2,000 events/s" in note and "--rate 1100" in note
    assert "--rate 100`" in pace_note(2000, 90)


def test_export_names_the_int8_recipe_it_chose_for_this_cpu():
    from encoders.export import INT8_RECIPES, int8_recipe

    out = recstream("encoders", "export", "--variant", "int8")
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert ": int8, dim 384, max length 512, sha256 " in line and line.endswith(f", {INT8_RECIPES[int8_recipe()]}"), line


def test_prune_removes_superseded_exports_and_interrupted_ones_only(tmp_path):
    import os

    from click.testing import CliRunner

    from encoders.export import _cache_suffix
    from stream.cli import cli

    models = tmp_path / "models"
    names = {
        "current": f"m-0123456789ab-{_cache_suffix('fp32')}",
        "current_int8": f"m-0123456789ab-{_cache_suffix('int8')}",
        "old_fp32": "m-0123456789ab-fp32-fused",
        "old_int8": "m-0123456789ab-int8-fused-rr",
        "interrupted": ".m-0123456789ab-fp32-fused-ln.tmp-999999999",  # no such process
        "in_progress": f".m-0123456789ab-fp32-fused-ln.tmp-{os.getpid()}",  # this one is alive
        "not_an_export": "notes",
    }
    for key, name in names.items():
        (models / name).mkdir(parents=True)
        if not key.startswith(("interrupted", "in_progress", "not_an")):
            (models / name / "manifest.json").write_text("{}")
        (models / name / "model.onnx").write_bytes(b"x" * 2_000_000)
    env = {"RECSTREAM_ENCODER__CACHE_DIR": str(tmp_path)}

    dry = CliRunner().invoke(cli, ["encoders", "prune", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert sorted(p.name for p in models.iterdir()) == sorted(names.values())  # nothing removed
    assert "6 MB to free" in dry.output and dry.output.count("would remove") == 3

    result = CliRunner().invoke(cli, ["encoders", "prune"], env=env)
    assert result.exit_code == 0, result.output
    kept = {names[k] for k in ("current", "current_int8", "in_progress", "not_an_export")}
    assert {p.name for p in models.iterdir()} == kept
    assert "6 MB freed" in result.output
