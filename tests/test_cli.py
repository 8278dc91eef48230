"""The `lscjax` command: exit codes and one-line errors."""

from lscjax._src.cli import main


def test_bad_data_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--quiet", "--data", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("lscjax demo: error:") and "train-images-idx3-ubyte" in err
