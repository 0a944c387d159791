"""The documentation as a user meets it: the README's (and docs/') Python examples run as they are
written, every command line of the README parses, the README stays short, and no relative link in
the project's Markdown points to a missing file or heading.

Each Python block runs in a fresh interpreter whose working folder is a temporary one holding
links to the repository's `examples/`, `tests/` and `weights/`: the examples are written to be run
from the repository root, and whatever they write lands in the temporary folder.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 250                       # STYLE.md, Docs: what a newcomer reads in five minutes
LINKED_FOLDERS = ("examples", "tests", "weights")
SKIPPED_FOLDERS = {"build", "dist", "node_modules", "__pycache__"}
BLOCK_TIMEOUT = 900                          # seconds; a cold kernel cache compiles wgnet's kernels first

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


# --- reading Markdown ---------------------------------------------------------------------------

def fenced_blocks(text: str, languages: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every fenced block in one of `languages`."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1).lower() in languages]


def python_blocks(path: Path) -> list[tuple[int, str]]:
    return fenced_blocks(path.read_text(encoding="utf-8"), ("python", "py"))


def command_lines(text: str) -> list[str]:
    """Shell command lines of fenced sh/bash/console blocks and of indented code blocks, with
    backslash continuations joined and `&&` chains split; comments after `#` dropped."""
    lines = []
    for _, code in fenced_blocks(text, ("sh", "bash", "shell", "console")):
        lines += code.splitlines()
    without_fences = FENCE.sub("", text)
    lines += [line[4:] for line in without_fences.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    joined, pending = [], ""
    for line in lines:
        line = line.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    commands = []
    for line in joined:
        for part in line.split("&&"):
            part = shlex.split(part, comments=True)
            if part:
                commands.append(part)
    return commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(text):
        base = slug(h)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of a Markdown file whose file (or heading) does not exist."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):      # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def markdown_files() -> list[Path]:
    """The project's Markdown files: every *.md under the repository, hidden folders (virtual
    environments, git) and build output left out."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_FOLDERS
                   and not d.endswith(".egg-info")]
        found += [Path(root) / f for f in files if f.endswith(".md")]
    return sorted(found)


# --- running an example ------------------------------------------------------------------------

def run_block(code: str, workdir: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, from `workdir`, with the repository's folders linked in."""
    for name in LINKED_FOLDERS:
        link = workdir / name
        if not link.exists():
            link.symlink_to(REPO / name, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)


def example_params():
    params = []
    for path in [README] + sorted(DOCS.glob("*.md")):
        for line, code in python_blocks(path):
            # a block that builds a full-size config takes a while on a cold kernel cache
            marks = [pytest.mark.slow] if re.search(r"""["']wgnet""", code) else []
            params.append(pytest.param(code, id=f"{path.relative_to(REPO)}:{line}", marks=marks))
    return params


@pytest.mark.parametrize("code", example_params())
def test_python_example_runs_as_written(code, tmp_path):
    r = run_block(code, tmp_path)
    assert r.returncode == 0, f"the example failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"


# --- the README ---------------------------------------------------------------------------------

def test_readme_has_python_examples_to_run():
    # an extraction that finds nothing would make the test above pass vacuously
    assert len(python_blocks(README)) >= 2


def test_readme_is_at_most_250_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def test_every_refpose_command_of_the_readme_parses():
    from analysis.flops import build_parser as flops_parser
    from refpose.cli import build_parser

    commands = command_lines(README.read_text(encoding="utf-8"))
    refpose_commands = [c for c in commands if c[0] == "refpose"]
    assert len(refpose_commands) >= 10
    for argv in commands:
        if argv[0] == "refpose":
            parser, args = build_parser(), argv[1:]
        elif argv[:3] == ["python", "-m", "analysis.flops"]:
            parser, args = flops_parser(), argv[3:]
        elif argv[:3] == ["python", "-m", "refpose"]:
            parser, args = build_parser(), argv[3:]
        else:
            continue
        try:
            parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"README command does not parse (exit {e.code}): {shlex.join(argv)}")


def test_the_repository_files_readme_commands_read_exist():
    # arguments naming files of the repository (the examples run from its root)
    named = [arg for argv in command_lines(README.read_text(encoding="utf-8")) for arg in argv
             if arg.startswith(("examples/", "tests/", "refpose/", "weights/"))]
    assert named, "the README's examples read files of the repository"
    for arg in named:
        assert (REPO / arg).exists(), f"the README names {arg}, which does not exist"


def test_the_readme_box_lies_in_its_image():
    cv2 = pytest.importorskip("cv2", reason="reading the image size needs OpenCV")
    m = re.search(r"(tests/assets/synth_heldout/images/\d+\.jpg) --bbox (\d+),(\d+),(\d+),(\d+)",
                  README.read_text(encoding="utf-8"))
    assert m, "the README's trained-weights example names an image and a box"
    H, W = cv2.imread(str(REPO / m.group(1))).shape[:2]
    x, y, w, h = map(int, m.groups()[1:])
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= W and y + h <= H


# --- links --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_relative_link_points_to_a_missing_file(path):
    assert broken_links(path) == []


def test_readme_links_into_docs():
    text = README.read_text(encoding="utf-8")
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(text) if t.startswith("docs/")}
    assert linked == {p.name for p in DOCS.glob("*.md")}, "every page of docs/ is linked from the README"


# --- the checks themselves can fail -------------------------------------------------------------

def test_a_broken_example_fails(tmp_path):
    assert run_block("import refpose\nrefpose.load('no-such-weights')\n", tmp_path).returncode != 0
    assert run_block("assert open('examples/cameraman.jpg', 'rb').read(2) == b'\\xff\\xd8'\n",
                     tmp_path).returncode == 0


def test_a_missing_link_is_reported(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading) [web](https://example.org/x.md) "
                    "`[code](nowhere.md)`\n[gone](nowhere.md) [no anchor](there.md#elsewhere)\n")
    assert broken_links(page) == ["nowhere.md: no such file", "there.md#elsewhere: no heading #elsewhere in there.md"]


def test_a_command_that_does_not_parse_is_found():
    from refpose.cli import build_parser

    [argv] = command_lines("    refpose infer photo.jpg --no-such-option\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv[1:])
