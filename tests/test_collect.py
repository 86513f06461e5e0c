"""python -m harness.collect: its command line (collecting itself is tested with the runner)."""

import pytest

from harness.collect import main as collect_main


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit:
        collect_main(["--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m harness.collect ")


def test_a_folder_without_rows_is_one_line(tmp_path, capsys):
    assert collect_main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
