from pathlib import Path

import typer.main

from coopinterp.cli import app, reference

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_reference_is_the_generated_one():
    # After adding or changing a command or option, regenerate docs/cli.md's CLI reference with
    #     python -m coopinterp.cli.reference --write docs/cli.md
    assert reference.section(CLI_DOC) == reference.markdown()


def test_the_reference_lists_every_option_of_every_command():
    text = reference.markdown()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"**`coopinterp {name}`**" in text
        for param in command.params:
            names = [param.name.upper()] if param.param_type_name == "argument" else param.opts + param.secondary_opts
            assert all(f"`{n}" in text or f" {n}" in text for n in names), (name, param.name)
