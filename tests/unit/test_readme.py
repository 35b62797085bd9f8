"""The README documents every setting with its real default, and keeps its two set-up commands."""

from __future__ import annotations

from pathlib import Path

from streams.settings_doc import settings_markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_settings_table_is_the_generated_one() -> None:
    assert settings_markdown() in README, "run: frustration settings --markdown, paste into README"


def test_readme_shows_exactly_the_two_set_up_commands() -> None:
    assert "make run" in README and "make test" in README
