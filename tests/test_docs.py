"""The README's and docs/guide.md's ```bash blocks run, in order, on tiny data: the docs cannot rot.

Each block runs as one bash script (``set -eo pipefail``, every command traced) in a workspace laid out like a
checkout with the shared data beside it — ``WS/checkout`` (``train.py`` linked in, a ``.venv/bin/activate``
that puts this interpreter first on ``PATH``) and ``WS/shared/data`` holding tiny archives in the layouts of
``cifar10-jpg.tar.gz`` and ``edm-cifar10-50k-png.tar.gz`` — so ``../shared/data/…`` and ``data/…`` resolve as
they do for a user. The only rewriting shrinks compute: a ``train.py`` command trains the ``convnet`` at batch
16 for a 500th of its ``--steps`` (at least 2) with a 2-epoch offline probe. ``make`` lines are not run (CI
runs ``make test``; ``make demo`` is the demo). ```console blocks are examples for a GPU or a cluster and are
not run. Every command must exit 0 without a traceback, and each kind of command must print its key line.
The guide's blocks start from what the README's five-minute path packed and trained.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACE = "+DOC-COMMAND+ "  # PS4: marks where each traced command's output begins

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_PER_CLASS, TEST_PER_CLASS, GENERATED = 6, 3, 30

# (a command matching this, the line its output must hold); every matching rule applies
KEY_LINES = (
    (r"-m shards pack\b", r"(?m)^wrote: +\d+ samples"),
    (r"-m shards verify\b", r"(?m): OK \(\d+ samples"),
    (r"-m shards info\b", r"(?m)^name +kind +split +count"),
    (r"-m loaders preview\b", r"(?m)^wrote \S+\.png \("),
    (r"-m loaders audit\b.*--plan-only", r"(?m)^epoch 0: \d+ samples = \d+ steps of \d+"),
    (r"-m loaders audit\b(?!.*--plan-only)", r"(?m)^epoch 0: \d+ samples \(planned \d+\), .* 0 corrupt skipped"),
    (r"train\.py\b.*--print-config", r"(?m)^resolved:"),
    # a run's "final accuracy", --eval-only's "evaluation of CHECKPOINT" (issue 27)
    (r"train\.py\b(?!.*--print-config)", r"(?m)(final accuracy|evaluation of \S+) at step \d+ on \d+ test images: kNN"),
    (r"^grep '\"final\"'", r'"kind": "final"'),
    (r"-m models export\b", r"(?m)^wrote \S*backbone\.pt"),
)


# -- the documents' blocks ----------------------------------------------------------------------------
def bash_blocks(doc: Path) -> list[str]:
    """The ```bash blocks of ``doc``, in order (indented blocks dedented)."""
    blocks = []
    for indent, body in re.findall(r"(?ms)^( *)```bash\n(.*?)^\1```", doc.read_text()):
        blocks.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return blocks


def _scaled(match: re.Match, floor: int) -> str:
    return f"{match.group(1)}{max(floor, int(match.group(2)) // 500)}"


def shrink(block: str) -> str:
    """``block`` as the test runs it: continuations joined, ``make`` lines dropped, ``train.py`` shrunk."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        if re.match(r"\s*make\b", line):
            continue
        if re.search(r"\btrain\.py\b", line):
            line = re.sub(r"(--steps )(\d+)", lambda m: _scaled(m, 2), line)
            line = re.sub(r"(--eval-every )(\d+)", lambda m: _scaled(m, 1), line)
            line = re.sub(r"--backbone \S+", "--backbone convnet", line)
            line = re.sub(r"--batch-size \d+", "--batch-size 16", line)
            extra = [] if "--probe-epochs" in line else ["--probe-epochs 2"]
            if not re.search(r"--resume|--eval-only|--print-config", line):
                extra += [] if "--backbone" in line else ["--backbone convnet"]
                extra += [] if "--batch-size" in line else ["--batch-size 16"]
                extra += [] if re.search(r"--steps|--epochs", line) else ["--steps 2"]
            line = re.sub(r"\btrain\.py\b", " ".join(["train.py", *extra]), line, count=1)
        lines.append(line)
    return "\n".join(lines)


# -- the workspace --------------------------------------------------------------------------------------
def _add_image(tar: tarfile.TarFile, name: str, image: np.ndarray, fmt: str) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    info = tarfile.TarInfo(name)
    info.size = buf.tell()
    buf.seek(0)
    tar.addfile(info, buf)


def make_shared_data(data: Path) -> None:
    """Tiny stand-ins for ../shared/data: CIFAR-10 as an ImageFolder of JPEGs (``cifar10/{train,test}/<class>/
    NNNN.jpg``) and EDM output as a flat folder of PNGs (``edm-cifar10/fid-tmp/000000/NNNNNN.png``)."""
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:  # 4×4 colour blocks at 32×32: distinct images that survive JPEG
        return np.kron(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), dtype=np.uint8))

    with tarfile.open(data / "cifar10-jpg.tar.gz", "w:gz") as tar:
        for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
            for name in CIFAR10_CLASSES:
                for i in range(per_class):
                    _add_image(tar, f"cifar10/{split}/{name}/{i:04d}.jpg", image(), "JPEG")
    with tarfile.open(data / "edm-cifar10-50k-png.tar.gz", "w:gz") as tar:
        for i in range(GENERATED):
            _add_image(tar, f"edm-cifar10/fid-tmp/000000/{i:06d}.png", image(), "PNG")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    """A checkout-like folder with the tiny shared data beside it, and the environment the commands run in."""
    ws = tmp_path_factory.mktemp("docs")
    make_shared_data(ws / "shared" / "data")
    checkout = ws / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    (checkout / "train.py").symlink_to(ROOT / "train.py")
    python_dir = Path(sys.executable).parent
    (checkout / ".venv" / "bin" / "activate").write_text(f'export PATH="{python_dir}:$PATH"\n')
    env = {
        **os.environ,
        "PATH": f"{python_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "CUDA_VISIBLE_DEVICES": "",  # the docs' commands on the CPU, as on a laptop
    }
    return checkout, env


def run_block(block: str, cwd: Path, env: dict) -> list[tuple[str, str]]:
    """Run one block; return (command, its output) per traced command. Fails on a non-zero exit."""
    script = f"set -eo pipefail\nPS4='{TRACE}'\nset -x\n{shrink(block)}\n"  # root's bash ignores PS4 in env
    proc = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    commands = [(*part.split("\n", 1), "")[:2] for part in proc.stdout.split(TRACE)[1:]]
    assert proc.returncode == 0, f"block exited {proc.returncode}:\n{block}\n--- output ---\n{proc.stdout[-6000:]}"
    assert "Traceback" not in proc.stdout, f"a traceback in:\n{block}\n--- output ---\n{proc.stdout[-6000:]}"
    return commands


def check_key_lines(commands: list[tuple[str, str]]) -> int:
    """Each command's output holds the key line of its kind; returns how many commands had one."""
    checked = 0
    for command, output in commands:
        for pattern, key in KEY_LINES:
            if re.search(pattern, command):
                assert re.search(key, output), f"`{command}` printed no line matching {key!r}:\n{output[-4000:]}"
                checked += 1
    return checked


def run_doc(doc: Path, cwd: Path, env: dict) -> tuple[int, int]:
    blocks = bash_blocks(doc)
    assert blocks, f"{doc} has no ```bash block"
    checked = ran = 0
    for block in blocks:
        commands = run_block(block, cwd, env)
        ran += len(commands)
        checked += check_key_lines(commands)
    return ran, checked


# -- the tests ------------------------------------------------------------------------------------------
def test_shrink_only_shrinks_training():
    block = (
        "make demo\n. .venv/bin/activate\npython train.py --shards a --shards b --steps 2000 \\\n"
        "    --eval-every 500 --out runs/x\npython train.py --resume runs/x --steps 4000\n"
        "python train.py --shards a --print-config\npython -m shards pack SRC --out d"
    )
    assert shrink(block).splitlines() == [
        ". .venv/bin/activate",
        "python train.py --probe-epochs 2 --backbone convnet --batch-size 16 --shards a --shards b --steps 4"
        "      --eval-every 1 --out runs/x",
        "python train.py --probe-epochs 2 --resume runs/x --steps 8",
        "python train.py --probe-epochs 2 --shards a --print-config",
        "python -m shards pack SRC --out d",
    ]


@pytest.fixture(scope="module")
def readme_ran(workspace) -> tuple[int, int]:
    checkout, env = workspace
    return run_doc(ROOT / "README.md", checkout, env)


def test_readme_commands_run_on_tiny_data(workspace, readme_ran):
    checkout, _ = workspace
    ran, checked = readme_ran
    # the five-minute path: 3 packs, verify, info, print-config, mkdir, preview, audit, train, grep (+ activate)
    assert checked >= 10, (ran, checked)
    for name, count in (("cifar10-train", 10 * TRAIN_PER_CLASS), ("cifar10-test", 10 * TEST_PER_CLASS)):
        assert f'"count": {count}' in (checkout / "data" / name / "manifest.json").read_text()
    assert (checkout / "runs" / "preview.png").stat().st_size > 0
    assert (checkout / "runs" / "first" / "ckpt-last.pt").exists()


def test_guide_commands_run_on_tiny_data(workspace, readme_ran):
    checkout, env = workspace
    ran, checked = run_doc(ROOT / "docs" / "guide.md", checkout, env)
    assert checked >= 8, (ran, checked)
    assert (checkout / "data" / "cifar10-500pc" / "manifest.json").exists()


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives ``doc``'s headings (lower case, punctuation but ``-`` and ``_`` dropped, spaces to
    ``-``), outside code blocks."""
    text = re.sub(r"(?ms)^ *```\w*\n.*?^ *```$", "", doc.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"(?m)^#+ (.*)$", text)}


def test_docs_links_name_pages_and_sections_that_exist():
    """Every relative link of the README and the docs pages names a file, and a heading of it, that exist."""
    for doc in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"):
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if "://" in target:
                continue
            page = (doc.parent / target) if target else doc
            assert page.exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
            if anchor:
                assert anchor in anchors(page), f"{doc.relative_to(ROOT)} links to missing section {target}#{anchor}"


def test_readme_is_a_front_page_with_the_two_commands():
    """The README stays a front page (at most 120 lines) whose first block is the two commands CI and users run."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 120
    first = [line.split("#")[0].strip() for line in bash_blocks(readme)[0].splitlines()]
    assert first == ["make demo", "make test"]
    targets = re.findall(r"(?m)^(\w+):", (ROOT / "Makefile").read_text())
    assert {"demo", "test"} <= set(targets)
