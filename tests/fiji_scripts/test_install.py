"""``oncoai fiji install``: the macros land where ImageJ lists them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fiji_scripts.install import (
    CORE_FILE,
    EXE_FILE,
    MACROS,
    find_imagej_dir,
    install,
    uninstall,
)
from model_zoo.cli import main
from model_zoo.errors import OncoAIError

from .conftest import macro_env, run_gui_macro

MENU_NAMES = {
    "Segment_Nuclei.ijm": "Segment Nuclei",
    "Segment_Cells.ijm": "Segment Cells",
    "Segment_Organoids.ijm": "Segment Organoids",
    "Denoise_Image.ijm": "Denoise Image",
    "Super_Resolve.ijm": "Super Resolve",
    "Run_Model.ijm": "Run Model",
    "oncoai_batch.ijm": "oncoai batch",
}


def test_install_copies_the_macros_and_records_the_exe(
    tmp_path: Path, oncoai_exe: Path
) -> None:
    done = install(tmp_path, exe=oncoai_exe)

    folder = tmp_path / "plugins" / "OncoAI"
    assert done.folder == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*MACROS, CORE_FILE, EXE_FILE, "oncoai-installed.txt"]
    )
    assert (folder / EXE_FILE).read_text().strip() == str(oncoai_exe.resolve())
    source = Path(__file__).resolve().parents[2] / "fiji_scripts"
    for name in MACROS:
        assert (folder / name).read_text() == (source / name).read_text()


def test_uninstall_removes_only_what_install_wrote(
    tmp_path: Path, oncoai_exe: Path
) -> None:
    install(tmp_path, exe=oncoai_exe)
    mine = tmp_path / "plugins" / "OncoAI" / "My_Own.ijm"
    mine.write_text('print("mine");')

    removed = uninstall(tmp_path)

    assert len(removed) == len(MACROS) + 3
    assert [p.name for p in mine.parent.iterdir()] == ["My_Own.ijm"]
    mine.unlink()
    install(tmp_path, exe=oncoai_exe)
    uninstall(tmp_path)
    assert not mine.parent.exists()


def test_the_command_line_installs_and_uninstalls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fiji", "install", "--imagej-dir", str(tmp_path)]) == 0
    assert "Plugins › OncoAI" in capsys.readouterr().out
    assert (tmp_path / "plugins" / "OncoAI" / "Segment_Nuclei.ijm").is_file()

    assert main(["fiji", "uninstall", "--imagej-dir", str(tmp_path)]) == 0
    assert "removed 10 files" in capsys.readouterr().out


def test_a_missing_imagej_dir_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(OncoAIError, match=r"ImageJ folder not found: .*nowhere"):
        find_imagej_dir(tmp_path / "nowhere")
    assert main(["fiji", "install", "--imagej-dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ImageJ folder not found")


def test_uninstall_without_an_installation_says_so(tmp_path: Path) -> None:
    with pytest.raises(OncoAIError, match="no OncoAI macros installed in"):
        uninstall(tmp_path)


def test_a_wrong_exe_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OncoAIError, match="oncoai executable not found"):
        install(tmp_path, exe=tmp_path / "no-oncoai")


def test_imagej_lists_the_macros_in_its_plugins_menu(
    tmp_path: Path, ij_jar: Path, oncoai_exe: Path
) -> None:
    imagej_dir = tmp_path / "ImageJ"
    imagej_dir.mkdir()
    install(imagej_dir, exe=oncoai_exe)
    code = (
        "List.setCommands;\n"
        'record("plugins", getDirectory("plugins"));\n'
        + "".join(
            f'record("{menu}", List.get("{menu}"));\n' for menu in MENU_NAMES.values()
        )
        + 'record("core", List.get("oncoai-core"));\n'
    )

    recorded = run_gui_macro(
        ij_jar, code, macro_env(oncoai_exe, tmp_path), tmp_path / "gui", imagej_dir
    )

    assert recorded["plugins"] == f"{imagej_dir / 'plugins'}/"
    for file_name, menu in MENU_NAMES.items():
        assert recorded[menu] == f'ij.plugin.Macro_Runner("OncoAI/{file_name}")'
    # The shared code is not a menu command.
    assert recorded["core"] == ""
