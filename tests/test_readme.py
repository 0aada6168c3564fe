"""README.md stays a textbook and RESULTS.md keeps the measurements.

The README is at most 300 lines; its two commands for a new machine are the ones CI (`.ci/run`) runs,
so the README cannot promise an install or a test run that CI does not check; and every section of
RESULTS.md that holds a table names the command that made its numbers and the machine they ran on.
"""

import os
import re
import shlex

import pipeline
import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def two_commands() -> list[tuple[str, str]]:
    """(command, its comment) for every command of the README's "Two commands" block, `&&` split apart."""
    section = read("README.md").split("## Two commands for a new machine", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    found = []
    for line in block.splitlines():
        code, _, comment = line.partition("  #")                     # the comments sit after two spaces
        found += [(c.strip(), comment.strip()) for c in code.split("&&") if c.strip()]
    return found


def ci_commands() -> list[str]:
    lines = [line.strip() for line in read(".ci/run").splitlines()]
    return [line for line in lines if line.startswith(("pip ", "python "))]


def test_readme_is_a_textbook_of_at_most_300_lines_that_links_the_paper_and_the_results():
    text = read("README.md")
    assert len(text.splitlines()) <= 300
    assert "arxiv.org/abs/2406.17672" in text and "(RESULTS.md)" in text
    assert os.path.isfile(os.path.join(ROOT, "RESULTS.md"))


def test_the_readme_install_and_test_commands_are_the_ones_ci_runs():
    readme = [c for c, _ in two_commands()]
    install = [c for c in readme if c.startswith("pip ")]
    tests = [c for c in readme if c.startswith("python -m pytest")]
    assert len(install) == 1 and len(tests) == 1 and len(readme) == 3
    ci = ci_commands()
    # CI installs quietly (-q); otherwise the argv is the README's, and CI installs nothing else
    assert [[a for a in shlex.split(c) if a != "-q"] for c in ci if c.startswith("pip ")] == [shlex.split(install[0])]
    # CI's test run is the README's, character for character, and CI runs no other python command
    assert [c for c in ci if c.startswith("python ")] == tests


def test_the_readme_demo_command_writes_the_file_its_comment_names():
    (demo, comment), = [(c, m) for c, m in two_commands() if c.startswith("python sample.py ")]
    args = sample.parse_args(shlex.split(demo)[2:])
    assert args.ckpt == pipeline.DEFAULT_CKPT and os.path.isfile(os.path.join(ROOT, args.ckpt))   # the bundled model
    named = re.search(r"writes (\S+\.wav)", comment).group(1)
    assert named == f"{args.out}/{sample.slug(args.prompts[0])}.wav"
    # tests/test_demo.py runs this command and checks the sound it makes


def test_every_table_in_results_names_its_command_and_machine():
    sections = re.split(r"^## ", read("RESULTS.md"), flags=re.M)[1:]
    with_tables = [s for s in sections if re.search(r"^\| --- ", s, re.M)]
    assert len(with_tables) >= 5
    for section in with_tables:
        title = section.splitlines()[0]
        prose = "\n".join(line for line in section.splitlines() if not line.startswith("|"))
        command = re.search(r"`(python|torchrun) [^`]+`", prose) or re.search(r"^(python|torchrun) ", prose, re.M)
        assert command, f"RESULTS.md, section '{title}': a table without the command that made it"
        assert re.search(r"cores|CPU|GPU|machine", prose), f"RESULTS.md, section '{title}': no machine named"
