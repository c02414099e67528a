"""The built-in corpus `tang-poems`: fetched once with npm, integrity checked, cached, prepared.

No test here reaches the network: a stub `npm` on PATH writes a small tarball laid out like
chinese-poetry's (poems under package/dist/quantangshi/, and files that must be left out).
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, cli_in_process
from gptlab.data import corpora
from gptlab.data.corpora import SkipReport, iter_documents, sri_digest

POEMS = {
    "package/dist/quantangshi/poet.tang.0.json": [
        {
            "author": "杜甫",
            "paragraphs": ["好雨知時節，當春乃發生。", "隨風潛入夜，潤物細無聲。"],
            "title": "春夜喜雨",
            "id": "aaaa-1",
        },
        {"author": "李白", "paragraphs": ["床前看月光，疑是地上霜。"], "title": "靜夜思", "id": "aaaa-2"},
    ],
    "package/dist/quantangshi/poet.tang.1000.json": [
        {"author": "王維", "paragraphs": ["空山不見人，但聞人語響。"], "title": "鹿柴", "id": "bbbb-1"},
    ],
}
# Present in the real package, and never to reach the cache or the dataset.
OTHERS = {
    "package/dist/quantangshi/poet.song.0.json": [{"author": "宋人", "paragraphs": ["宋詩一句。"], "title": "宋"}],
    "package/dist/quantangshi/authors.tang.json": [{"name": "杜甫", "desc": "唐代詩人"}],
    "package/dist/quantangshi/error/poet.tang.0.json": [{"author": "錯", "paragraphs": ["錯誤之詩。"], "title": "錯"}],
    "package/dist/yudingquantangshi/json/001.json": [{"author": "御", "paragraphs": ["御定之詩。"], "title": "御"}],
    "package/README.md": "# chinese-poetry\n",
}


def _tarball(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = (content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A stub npm first on PATH that logs its arguments and 'packs' a small tarball into its cwd;
    the pinned integrity is that tarball's. Returns the log file."""
    tgz = _tarball(tmp_path / "fake.tgz", {**POEMS, **OTHERS})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "npm-calls.log"
    npm = bin_dir / "npm"
    npm.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"shutil.copy({str(tgz)!r}, 'chinese-poetry-2.0.1.tgz')\n"
        "print('chinese-poetry-2.0.1.tgz')\n"
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "TANG_INTEGRITY", sri_digest(tgz))
    return log


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_fetch_caches_only_the_tang_poems_and_prepare_reuses_them(fake_npm, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    proc = cli_in_process(capsys, "prepare", "tang-poems", "--out", data, "--val-fraction", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[:2] for c in _calls(fake_npm)] == [["pack", "chinese-poetry@2.0.1"]]
    cached = tmp_path / "cache" / "corpora" / "tang-poems"
    assert sorted(p.name for p in cached.iterdir()) == ["poet.tang.0.json", "poet.tang.1000.json"]
    meta = json.loads((data / "meta.json").read_text())
    assert sum(meta["splits"][s]["documents"] for s in ("train", "val")) == 3  # one per poem
    assert meta["sources"] == ["tang-poems"]

    # A second prepare, even into another directory and without npm on PATH, reads the cache.
    monkeypatch.setenv(
        "PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(tmp_path / "bin"))
    )
    again = cli_in_process(capsys, "prepare", "tang-poems", "--out", tmp_path / "data2", "--val-fraction", "0.3")
    assert again.returncode == 0, again.stderr
    assert len(_calls(fake_npm)) == 1
    assert "fetching" not in again.stderr
    for split in ("train", "val"):
        assert np.array_equal(
            np.fromfile(data / f"{split}.bin", dtype=np.uint16),
            np.fromfile(tmp_path / "data2" / f"{split}.bin", dtype=np.uint16),
        )


def test_each_record_becomes_one_document_of_its_poem_text_only(fake_npm):
    report = SkipReport()
    docs = [d.text for d in iter_documents(["tang-poems"], report)]
    expected = [
        f"{r['title']}\n{r['author']}\n" + "\n".join(r["paragraphs"]) for name in sorted(POEMS) for r in POEMS[name]
    ]
    assert docs == expected
    assert report.total == 0
    joined = "".join(docs)
    for left_out in ("aaaa-1", "宋詩", "唐代詩人", "錯誤", "御定", "chinese-poetry"):
        assert left_out not in joined


def test_a_tarball_that_does_not_match_the_pinned_integrity_is_refused(fake_npm, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(corpora, "TANG_INTEGRITY", "sha512-" + "A" * 86 + "==")
    proc = cli_in_process(capsys, "prepare", "tang-poems", "--out", tmp_path / "data")
    # The 'fetching' notice goes to stderr first; the error itself is one line.
    proc.stderr = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("fetching"))
    assert_clean_error(proc, "does not match the published integrity", "refusing")
    assert not (tmp_path / "cache" / "corpora" / "tang-poems").exists()
    assert not (tmp_path / "data" / "meta.json").exists()


def test_npm_missing_is_one_line_that_says_what_to_do(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))
    proc = cli_in_process(capsys, "prepare", "tang-poems", "--out", tmp_path / "data")
    assert_clean_error(proc, "npm, which is not installed", "apt-get install npm", "poet.tang.*.json")


def test_an_unreachable_registry_is_one_line_with_npms_reason(tmp_path, capsys, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    # What npm 11 prints when the registry cannot be reached (abridged).
    npm.write_text(
        "#!/bin/sh\ncat >&2 <<'EOF'\nnpm error code ECONNREFUSED\nnpm error syscall connect\n"
        "npm error FetchError: request to http://127.0.0.1:9/chinese-poetry failed, "
        "reason: connect ECONNREFUSED 127.0.0.1:9\nnpm error     at ClientRequest.<anonymous>\nEOF\n"
        "exit 1\n"
    )
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "cache"))
    proc = cli_in_process(capsys, "prepare", "tang-poems", "--out", tmp_path / "data")
    proc.stderr = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("fetching"))
    assert_clean_error(proc, "reason: connect ECONNREFUSED", "registry reachable", "poet.tang.*.json")
