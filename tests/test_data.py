"""Data preparation: sources, tokenizer, shards, manifest, reuse, batches and bad input.

References are independent of the code under test: chunk contents are checked by decoding token
ids to bytes with GPT-2's byte<->unicode table written out here, shards are rebuilt from a
single-text `tokenizer.encode` loop and the split rule from `hashlib`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pi_lnfree import cli
from pi_lnfree.batches import RandomChunkSampler, iter_valid_batches, to_device
from pi_lnfree.corpus import list_files, stdlib_root
from pi_lnfree.data import dtype_for_vocab, load_data_folder, prepare
from pi_lnfree.errors import UserError


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode -> byte table (the byte-level BPE alphabet), built from its definition."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


BYTE_DECODER = gpt2_byte_decoder()


def ids_to_bytes(tok, ids) -> bytes:
    return bytes(BYTE_DECODER[ch] for i in ids for ch in tok.id_to_token(int(i)))


# Distinctive small Python files: a hand-made corpus whose chunking can be computed by hand.
SMALL_FILES = {
    f"pkg/mod_{i:02d}.py": "".join(
        f"def function_{i}_{j}(value, scale={j}):\n    '''Return value times {j} plus {i}.'''\n"
        f"    return value * scale + {i}  # {'x' * (i % 7)}\n\n"
        for j in range(3 + 2 * i)
    )
    for i in range(24)
}


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    return write_files(tmp_path_factory.mktemp("corpus"), SMALL_FILES)


@pytest.fixture(scope="module")
def small_data(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "data"
    prepare(f"dir:{small_corpus}", out, vocab_size=300, seq_len=16, valid_fraction=0.25)
    return out


def expected_shards(tok, texts: list[str], seq_len: int, dtype) -> np.ndarray:
    """Hand computation: each text alone through tokenizer.encode, cut to whole seq_len chunks."""
    rows = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        n = len(ids) // seq_len
        rows.extend(ids[k * seq_len : (k + 1) * seq_len] for k in range(n))
    return np.asarray(rows, dtype=dtype).reshape(-1, seq_len)


def sha1_fraction(text: str) -> float:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) / 2.0**160


# ---------------------------------------------------------------------------------------------
# shards: contents, counts, split, manifest


def test_shards_match_hand_computation_and_hash_split(small_data):
    folder = load_data_folder(small_data)
    tok = folder.tokenizer()
    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]  # dir: sources are read sorted by path
    valid_texts = [t for t in texts if sha1_fraction(t) < 0.25]
    train_texts = [t for t in texts if sha1_fraction(t) >= 0.25]
    assert 0 < len(valid_texts) < len(texts)
    for split, split_texts in (("train", train_texts), ("valid", valid_texts)):
        expected = expected_shards(tok, split_texts, 16, np.uint16)
        np.testing.assert_array_equal(np.asarray(getattr(folder, split)), expected)
        token_counts = [len(tok.encode(t, add_special_tokens=False).ids) for t in split_texts]
        m = folder.manifest
        assert m["chunks"][split] == sum(n // 16 for n in token_counts) == len(expected)
        assert m["tokens"][split] == sum(token_counts)
        assert m["files"][split] == len(split_texts)
        assert m["text_bytes"][split] == sum(len(t.encode()) for t in split_texts)


def test_tokenizer_is_trained_on_the_train_split_only(small_data):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]
    reference = Tokenizer(models.BPE())
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    reference.train_from_iterator(
        [t for t in texts if sha1_fraction(t) >= 0.25],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    assert (small_data / "tokenizer.json").read_text() == reference.to_str()


def test_dir_source_glob_skips_hidden_folders(tmp_path, small_data):
    root = write_files(tmp_path / "tree", {
        "a/one.txt": SMALL_FILES["pkg/mod_10.py"], "two.txt": SMALL_FILES["pkg/mod_11.py"],
        "three.py": SMALL_FILES["pkg/mod_12.py"], ".hidden/four.txt": SMALL_FILES["pkg/mod_13.py"],
    })
    assert [p.relative_to(root).as_posix() for p in list_files(root, "*.txt")] == ["a/one.txt", "two.txt"]
    m = prepare(f"dir:{root}", tmp_path / "txt", tokenizer=small_data, seq_len=16, glob="*.txt",
                valid_fraction=0.0)
    assert m["files"]["train"] == 2
    tok = load_data_folder(small_data).tokenizer()
    expected = expected_shards(tok, [SMALL_FILES["pkg/mod_10.py"], SMALL_FILES["pkg/mod_11.py"]], 16, np.uint16)
    np.testing.assert_array_equal(load_data_folder(tmp_path / "txt").train, expected)


def test_no_chunk_crosses_two_files(small_data):
    folder = load_data_folder(small_data)
    tok = folder.tokenizer()
    contents = [t.encode() for t in SMALL_FILES.values()]
    for chunk in np.concatenate([folder.train, folder.valid]):
        piece = ids_to_bytes(tok, chunk)
        assert len(piece) > 0
        assert any(piece in c for c in contents)


def test_stdlib_chunks_decode_to_substrings_of_their_files(data_dir):
    folder = load_data_folder(data_dir)
    tok = folder.tokenizer()
    root = stdlib_root()
    files = [p.read_bytes() for p in list_files(root, "*.py", ("site-packages", "__pycache__"))[:200]]
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        chunks = getattr(folder, split)
        for i in rng.choice(len(chunks), size=15, replace=False):
            piece = ids_to_bytes(tok, chunks[i])
            assert any(piece in f for f in files), f"{split} chunk {i} is not inside one stdlib file"


def test_manifest_is_complete_and_consistent(data_dir):
    folder = load_data_folder(data_dir)
    m = folder.manifest
    for key in ("source", "files", "chunks", "tokens", "vocab_size", "seq_len", "tokenizer_sha256",
                "split", "created", "dtype", "request", "eof_id"):
        assert key in m, key
    assert m["source"] == "python-stdlib" and m["seq_len"] == 64 and m["vocab_size"] == 512
    assert m["dtype"] == "uint16" and folder.train.dtype == np.uint16
    assert folder.tokenizer_sha256 == hashlib.sha256((data_dir / "tokenizer.json").read_bytes()).hexdigest()
    for split in ("train", "valid"):
        size = (data_dir / f"{split}.bin").stat().st_size
        assert size == m["chunks"][split] * 64 * 2
        assert m["tokens"][split] >= m["chunks"][split] * 64
        assert int(np.asarray(getattr(folder, split)).max()) < m["vocab_size"]
    assert sum(m["text_bytes"].values()) >= 1.5e6 and m["limit_mb"] == 1.5
    assert not folder.train.flags.writeable
    tok = folder.tokenizer()
    assert tok.get_vocab_size() == 512 and tok.token_to_id("<|endoftext|>") == m["eof_id"]


def test_preparation_is_deterministic(small_corpus, small_data, tmp_path):
    # the same files in another place, another order of creation: identical tokenizer and shards
    moved = write_files(tmp_path / "moved", dict(reversed(list(SMALL_FILES.items()))))
    again = tmp_path / "again"
    prepare(f"dir:{moved}", again, vocab_size=300, seq_len=16, valid_fraction=0.25)
    for name in ("tokenizer.json", "train.bin", "valid.bin"):
        assert (again / name).read_bytes() == (small_data / name).read_bytes(), name


def test_dtype_switches_to_uint32_for_large_vocabularies(small_corpus, small_data, tmp_path):
    assert dtype_for_vocab(65535) == np.uint16 and dtype_for_vocab(65536) == np.uint32
    tok = load_data_folder(small_data).tokenizer()
    tok.add_special_tokens([f"<|extra_{i}|>" for i in range(65536 - tok.get_vocab_size() + 10)])
    tok.save(str(tmp_path / "big.json"))
    out = tmp_path / "big"
    m = prepare(f"dir:{small_corpus}", out, tokenizer=tmp_path / "big.json", seq_len=16, valid_fraction=0.25)
    assert m["vocab_size"] == 65546 and m["dtype"] == "uint32" and not m["tokenizer_trained"]
    folder = load_data_folder(out)
    assert folder.train.dtype == np.uint32
    np.testing.assert_array_equal(folder.train, load_data_folder(small_data).train)


# ---------------------------------------------------------------------------------------------
# sources through `datasets`


def test_files_jsonl_source(tmp_path, small_data):
    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "jsonl"
    m = prepare(f"files:{jsonl}", out, tokenizer=small_data / "tokenizer.json", seq_len=16,
                valid_fraction=0.25, text_column="body")
    assert m["source_kind"] == "files"
    # same documents, same order, same tokenizer: the same shards as the dir: source
    for name in ("train.bin", "valid.bin"):
        assert (out / name).read_bytes() == (small_data / name).read_bytes()


def _hub_folder(root: Path, splits: dict[str, list[str]], column: str = "content") -> Path:
    from datasets import Dataset

    root.mkdir(parents=True)
    for split, texts in splits.items():
        Dataset.from_dict({column: texts, "path": [f"{split}/{i}.py" for i in range(len(texts))]}).to_parquet(
            str(root / f"{split}.parquet"))
    return root


def test_hub_source_uses_the_datasets_own_splits(tmp_path, small_data):
    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]
    hub = _hub_folder(tmp_path / "hubds", {"train": texts[:18], "validation": texts[18:]})
    out = tmp_path / "hub"
    m = prepare(f"hub:{hub}", out, tokenizer=small_data / "tokenizer.json", seq_len=16)
    assert m["files"] == {"train": 18, "valid": 6}
    assert m["split"]["rule"] == "the source's own validation split"
    folder, tok = load_data_folder(out), load_data_folder(small_data).tokenizer()
    np.testing.assert_array_equal(folder.train, expected_shards(tok, texts[:18], 16, np.uint16))
    np.testing.assert_array_equal(folder.valid, expected_shards(tok, texts[18:], 16, np.uint16))


def test_hub_source_with_config_and_separate_validation_dataset(tmp_path, small_data):
    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]
    train = _hub_folder(tmp_path / "ds-train", {"train": texts[:20]}, column="text")
    valid = _hub_folder(tmp_path / "ds-valid", {"train": texts[20:]}, column="text")
    out = tmp_path / "hub2"
    m = prepare(f"hub:{train}:default,{valid}", out, tokenizer=small_data / "tokenizer.json", seq_len=16,
                text_column="text")
    assert m["files"] == {"train": 20, "valid": 4}
    # a dataset saved with save_to_disk goes through load_dataset as well
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": texts[:20]}),
                 "validation": Dataset.from_dict({"text": texts[20:]})}).save_to_disk(str(tmp_path / "saved"))
    out3 = tmp_path / "hub3"
    prepare(f"hub:{tmp_path / 'saved'}", out3, tokenizer=small_data / "tokenizer.json", seq_len=16,
            text_column="text")
    for name in ("train.bin", "valid.bin"):
        assert (out3 / name).read_bytes() == (out / name).read_bytes()


def test_limit_mb_caps_the_corpus(small_corpus, tmp_path):
    texts = [SMALL_FILES[k] for k in sorted(SMALL_FILES)]
    sizes = np.cumsum([len(t.encode()) for t in texts])
    limit = float(sizes[4]) / 1e6  # reading stops once the 5th file brought the total to the limit
    m = prepare(f"dir:{small_corpus}", tmp_path / "lim", vocab_size=300, seq_len=16, limit_mb=limit,
                valid_fraction=0.0)
    assert m["files"]["train"] == 5 and m["text_bytes"]["train"] == sizes[4]


# ---------------------------------------------------------------------------------------------
# reuse and overwrite


def test_reuse_mismatch_and_overwrite(small_corpus, tmp_path):
    out = tmp_path / "reuse"
    args = dict(vocab_size=300, seq_len=16, valid_fraction=0.25)
    first = prepare(f"dir:{small_corpus}", out, **args)
    stamp = (out / "train.bin").stat().st_mtime_ns
    again = prepare(f"dir:{small_corpus}", out, **args)
    assert again["reused"] and not first["reused"]
    assert again["created"] == first["created"] and (out / "train.bin").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="seq_len 16 != 32"):
        prepare(f"dir:{small_corpus}", out, vocab_size=300, seq_len=32, valid_fraction=0.25)
    m = prepare(f"dir:{small_corpus}", out, vocab_size=300, seq_len=32, valid_fraction=0.25, overwrite=True)
    assert m["seq_len"] == 32 and load_data_folder(out).train.shape[1] == 32


def test_load_data_folder_rejects_incomplete_folders(small_data, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data_folder(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "tokenizer.json", "train.bin", "valid.bin"):
        (broken / name).write_bytes((small_data / name).read_bytes())
    with open(broken / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="incomplete"):
        load_data_folder(broken)
    (broken / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="not the tokenizer"):
        load_data_folder(broken)


# ---------------------------------------------------------------------------------------------
# batches


def test_sampler_epochs_are_permutations_and_seeded():
    chunks = np.arange(40 * 4, dtype=np.uint16).reshape(40, 4)
    s = RandomChunkSampler(chunks, batch_size=8, seed=3)
    epoch = torch.cat([s.next_batch() for _ in range(5)])
    assert epoch.dtype == torch.int64 and epoch.shape == (40, 4)
    assert sorted(epoch[:, 0].tolist()) == list(range(0, 160, 4))  # every chunk exactly once, whole rows
    assert torch.equal(epoch[:, 1:] - epoch[:, :1], torch.arange(1, 4).expand(40, 3))
    next_epoch = torch.cat([s.next_batch() for _ in range(5)])
    assert sorted(next_epoch[:, 0].tolist()) == list(range(0, 160, 4))
    assert not torch.equal(epoch, next_epoch)
    same = RandomChunkSampler(chunks, batch_size=8, seed=3)
    assert torch.equal(torch.cat([same.next_batch() for _ in range(5)]), epoch)
    other = RandomChunkSampler(chunks, batch_size=8, seed=4)
    assert not torch.equal(torch.cat([other.next_batch() for _ in range(5)]), epoch)


def test_sampler_resumes_exactly_through_a_weights_only_checkpoint(tmp_path):
    chunks = np.arange(37 * 3, dtype=np.uint16).reshape(37, 3)  # 37 % 5 != 0: batches straddle epochs
    a = RandomChunkSampler(chunks, batch_size=5, seed=1337)
    for _ in range(9):
        a.next_batch()
    torch.save({"sampler": a.state_dict()}, tmp_path / "ckpt.pt")
    expected = [a.next_batch() for _ in range(12)]
    b = RandomChunkSampler(chunks, batch_size=5, seed=1337)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["sampler"])
    for want in expected:
        assert torch.equal(b.next_batch(), want)
    with pytest.raises(UserError, match="for 37 training chunks .* has 36"):
        RandomChunkSampler(chunks[:36], batch_size=5, seed=1337).load_state_dict(a.state_dict())


def test_valid_batches_are_the_first_sequences_in_order(data_dir):
    folder = load_data_folder(data_dir)
    batches = list(iter_valid_batches(folder, batch_size=8, batches=3))
    assert [b.shape for b in batches] == [(8, 64)] * 3 and batches[0].dtype == torch.int64
    np.testing.assert_array_equal(torch.cat(batches).numpy(), folder.valid[:24])
    everything = list(iter_valid_batches(folder, batch_size=50))
    n = len(folder.valid)
    assert len(everything) == -(-n // 50) and everything[-1].shape[0] == n - 50 * (len(everything) - 1)
    np.testing.assert_array_equal(torch.cat(everything).numpy(), folder.valid)
    with pytest.raises(UserError, match="validation sequences"):
        next(iter_valid_batches(folder, batch_size=n, batches=2))


def test_empty_validation_split_is_reported(small_corpus, tmp_path):
    out = tmp_path / "novalid"
    m = prepare(f"dir:{small_corpus}", out, vocab_size=300, seq_len=16, valid_fraction=0.0)
    assert m["chunks"]["valid"] == 0 and m["files"]["valid"] == 0
    folder = load_data_folder(out)
    assert folder.valid.shape == (0, 16)
    with pytest.raises(UserError, match="validation split .* is empty"):
        next(iter_valid_batches(folder, batch_size=4))


def test_to_device_keeps_values():
    batch = torch.arange(12).reshape(3, 4)
    assert torch.equal(to_device(batch, "cpu"), batch)
    if torch.cuda.is_available():
        moved = to_device(batch, "cuda")
        assert moved.is_cuda and torch.equal(moved.cpu(), batch)


# ---------------------------------------------------------------------------------------------
# bad input: UserError, and through the CLI exit code 2 with one line on stderr


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        cli.main(["data", "prepare", *args])
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, small_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    write_files(root / "empty_dir", {"notes.txt": "no python here"})
    write_files(root / "empty_files", {"a.py": "", "b.py": ""})
    write_files(root / "latin1", {"ok.py": SMALL_FILES["pkg/mod_20.py"], "bad.py": "caf\xe9 = 1\n".encode("latin-1")})
    write_files(root / "short", {"a.py": "x = 1\n"})
    tok = load_data_folder(small_data).tokenizer()
    tok.add_special_tokens(["<|other|>"])
    tok.save(str(root / "other_tok.json"))
    return {"root": root}


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-files", "no files matching '\\*.py'"),
        ("empty-corpus", "empty corpus; 2 empty skipped"),
        ("vocab-too-small", "vocab size 100 is too small"),
        ("seq-len-1", "--seq-len must be at least 2"),
        ("other-tokenizer", "another tokenizer"),
        ("unknown-source", "unknown source 'ftp:x'"),
        ("missing-dir", "is not a directory"),
        ("no-tokenizer", "give exactly one of --vocab-size"),
        ("too-short", "no training chunks"),
        ("bad-fraction", "--valid-fraction must be in"),
        ("missing-column", "text column 'content' not in the dataset"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, message, capsys, bad_inputs, small_data, tmp_path):
    root = bad_inputs["root"]
    out = str(tmp_path / "out")
    args = {
        "no-files": ["--source", f"dir:{root / 'empty_dir'}", "--vocab-size", "300"],
        "empty-corpus": ["--source", f"dir:{root / 'empty_files'}", "--vocab-size", "300"],
        "vocab-too-small": ["--source", "python-stdlib", "--vocab-size", "100"],
        "seq-len-1": ["--source", "python-stdlib", "--vocab-size", "300", "--seq-len", "1"],
        "other-tokenizer": ["--source", "python-stdlib", "--tokenizer", str(root / "other_tok.json")],
        "unknown-source": ["--source", "ftp:x", "--vocab-size", "300"],
        "missing-dir": ["--source", f"dir:{root / 'nope'}", "--vocab-size", "300"],
        "no-tokenizer": ["--source", "python-stdlib"],
        "too-short": ["--source", f"dir:{root / 'short'}", "--vocab-size", "300"],
        "bad-fraction": ["--source", "python-stdlib", "--vocab-size", "300", "--valid-fraction", "1.5"],
        "missing-column": ["--source", f"files:{root / 'docs.jsonl'}", "--vocab-size", "300"],
    }[case]
    if case == "other-tokenizer":
        out = str(small_data)  # an existing folder made with another tokenizer
    if case == "missing-column":
        (root / "docs.jsonl").write_text(json.dumps({"text": "x = 1\n"}) + "\n")
    code, stdout, stderr = run_cli(capsys, *args, "--out", out)
    assert code == 2, stderr
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(message, lines[0]), lines[0]


def test_unreadable_files_are_skipped_and_counted(bad_inputs, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "--source", f"dir:{bad_inputs['root'] / 'latin1'}", "--vocab-size",
                                   "300", "--seq-len", "16", "--valid-fraction", "0", "--out",
                                   str(tmp_path / "l1"), "--json")
    assert code == 0, stderr
    m = json.loads(stdout)
    assert m["skipped_files"] == {"not UTF-8": 1} and m["files"]["train"] == 1
    assert "skipped 1 not UTF-8" in stderr


def test_console_script_prints_one_json_object(small_corpus, tmp_path):
    exe = Path(sys.executable).with_name("pi-lnfree")
    if not exe.exists():
        pytest.skip("console script not installed")
    cmd = [str(exe), "data", "prepare", "--source", f"dir:{small_corpus}", "--vocab-size", "300",
           "--seq-len", "16", "--valid-fraction", "0.25", "--out", str(tmp_path / "cs"), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest == {**json.loads((tmp_path / "cs" / "manifest.json").read_text()), "reused": False}


def test_hub_tokenizer_unreachable_is_a_user_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(UserError, match="cannot fetch tokenizer.json of 'someone/tok' from the hub"):
        prepare("python-stdlib", tmp_path / "o", tokenizer="hub:someone/tok")


def test_unreachable_hub_dataset_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "pi_lnfree.cli", "data", "prepare", "--source",
                           "hub:someone/no-such-dataset", "--vocab-size", "300", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load dataset 'someone/no-such-dataset': ")
