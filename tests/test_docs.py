"""The docs run as written: every code block of README.md and docs/*.md marked runnable (an HTML comment
line ``<!-- runnable -->``, invisible on GitHub, directly before the fenced block) runs on the demo model.

Each block runs in a fresh directory holding ``demo/`` (examples/demo.py's model, ``data/input.parquet``
and ``rows.json``, built once per session, with fewer rows than `make demo`'s) and ``.venv``, a link to
this interpreter's environment. Python blocks run with this interpreter, bash blocks under
``bash -euo pipefail`` with ``.venv/bin`` first on the PATH; PYTHONPATH is the repository. A port 8080 in
a block becomes a free port, so a busy 8080 fails nothing. A block fails by its exit status, and the
failure shows the block and its output. Whatever a block leaves running is killed with its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
VENV = Path(sys.executable).parent.parent  # the environment running the tests (`make test`'s .venv)
TIMEOUT_S = 120


@dataclass(frozen=True)
class Block:
    doc: str    # path relative to the repository
    line: int   # 1-based line of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(path: Path, root: Path = ROOT) -> tuple[list[Block], list[str]]:
    """(the runnable blocks of one Markdown file, what is wrong with its markers)."""
    doc = str(path.relative_to(root))
    lines = path.read_text().splitlines()
    blocks, problems = [], []
    for i, line in enumerate(lines):
        text = line.strip()
        if text != MARKER:
            if re.match(r"<!--.*\brun", text, re.IGNORECASE):
                problems.append(f"{doc}:{i + 1}: {text!r} looks like a runnable marker but is not {MARKER!r}")
            continue
        fence = lines[i + 1].strip() if i + 1 < len(lines) else ""
        language = fence[3:].strip()
        if not fence.startswith("```") or language not in LANGUAGES:
            problems.append(f"{doc}:{i + 1}: {MARKER} must be followed directly by a fenced block of "
                            f"{sorted(LANGUAGES)}; the next line is {fence!r}")
            continue
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{doc}:{i + 2}: the runnable block is never closed")
            continue
        blocks.append(Block(doc, i + 2, LANGUAGES[language], "\n".join(lines[i + 2:end]) + "\n"))
    return blocks, problems


BLOCKS = [block for path in DOCS for block in parse(path)[0]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(workdir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(workdir / ".venv" / "bin"), env.get("PATH", "")])
    env["ARROWSCORE_CACHE_DIR"] = str(workdir / ".cache")  # nothing of the user's cache is touched
    return env


def _run(args: list[str], workdir: Path) -> subprocess.CompletedProcess:
    """Run in a session of its own; whatever is left of it (a server in the background) is killed after."""
    proc = subprocess.Popen(args, cwd=workdir, env=_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[killed after {TIMEOUT_S} s]"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, proc.returncode, out)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[Path, str]:
    """(a directory holding demo/, examples/demo.py's output as it printed it), built once."""
    home = tmp_path_factory.mktemp("demo")
    (home / ".venv").symlink_to(VENV, target_is_directory=True)
    # run by .venv/bin/python, so that the commands it prints read `.venv/bin/arrowscore ...` as after `make demo`
    done = _run([str(home / ".venv" / "bin" / "python"), str(ROOT / "examples" / "demo.py"), "demo",
                 "--rows", "20000"], home)
    assert done.returncode == 0, done.stdout
    return home / "demo", done.stdout


@pytest.fixture
def workdir(demo, tmp_path) -> Path:
    shutil.copytree(demo[0], tmp_path / "demo", ignore=shutil.ignore_patterns("out"))
    (tmp_path / ".venv").symlink_to(VENV, target_is_directory=True)
    return tmp_path


def test_every_marker_is_followed_by_a_fenced_block():
    problems = [p for path in DOCS for p in parse(path)[1]]
    assert not problems, "\n".join(problems)


def test_markers_that_are_wrong_are_found(tmp_path):
    """The check above sees what it must: a marker before prose, a blank line, an unknown language, a typo."""
    doc = tmp_path / "check.md"
    doc.write_text(f"{MARKER}\ntext\n\n{MARKER}\n\n```bash\ntrue\n```\n{MARKER}\n```yaml\na: 1\n```\n"
                   f"<!-- runable -->\n```bash\ntrue\n```\n{MARKER}\n```python\nprint(1)\n```\n{MARKER}\n```bash\n")
    blocks, problems = parse(doc, tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == ["check.md:1", "check.md:4", "check.md:9", "check.md:13",
                                                       "check.md:22"], problems
    assert [(b.line, b.language, b.code) for b in blocks] == [(18, "python", "print(1)\n")]


def test_the_readme_has_runnable_blocks_and_a_quickstart():
    """A broken parser (or lost markers) would run nothing and pass: the README's own blocks must be found."""
    readme = [b for b in BLOCKS if b.doc == "README.md"]
    assert {b.language for b in readme} == {"python", "bash"}
    assert any(".venv/bin/arrowscore info demo/model" in b.code for b in readme)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_lead_somewhere():
    """README and docs/ link to each other (the README's detail moved to docs/): every relative link names a
    file that exists and, after '#', a heading it has."""
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            name, _, anchor = target.partition("#")
            dest = (path.parent / name).resolve() if name else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = {_slug(line.lstrip("#")) for line in dest.read_text().splitlines() if line.startswith("#")}
                if anchor not in headings:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _commands(code: str) -> list[str]:
    return [" ".join(line.split("#")[0].split()) for line in code.splitlines() if line.split("#")[0].strip()]


def test_the_demo_prints_the_readme_quickstart(demo):
    """`make demo` ends with the commands to try next; the first three are the README's runnable quickstart."""
    printed = demo[1][demo[1].index("Next, try these on the demo model:"):].splitlines()[1:]
    printed = [" ".join(line.split("#")[0].split()) for line in printed if line.strip()]
    assert printed[0] == ".venv/bin/arrowscore info demo/model", printed
    quickstart = next(b for b in BLOCKS if b.doc == "README.md" and "arrowscore info demo/model" in b.code)
    assert _commands(quickstart.code) == printed[:3]
    assert printed[3] == ".venv/bin/arrowscore serve demo/model" and printed[4].startswith("curl -s 127.0.0.1:8080/")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_runnable_block(block: Block, workdir: Path):
    code = block.code.replace("8080", str(_free_port()))
    script = workdir / ("block.py" if block.language == "python" else "block.sh")
    script.write_text(code)
    args = [sys.executable, script.name] if block.language == "python" else ["bash", "-euo", "pipefail", script.name]
    done = _run(args, workdir)
    if done.returncode != 0:
        pytest.fail(f"{block.id}: the {block.language} block exited {done.returncode}\n"
                    f"---- block ----\n{code}---- output ----\n{done.stdout[-8000:]}", pytrace=False)
