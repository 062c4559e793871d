"""Robustness harness (issue 23): hypothesis draws CLI arguments, manifest mutations and server
request sequences, and every draw must keep the contract:

- exit status 0, 1 or 2, never a traceback; bad input (2) is one line on stderr;
- nothing is written outside the folder the command owns (``--out`` for ``zoo``, the ``--json``
  file for ``verify``);
- the paged server finishes every request it accepted (an error is a finish reason), and its
  pool is full again once they are done.

``make test`` runs ``ROBUSTNESS_EXAMPLES`` (default 8) draws per property, in process;
``make fuzz`` runs many more.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from generator import zoo
from generator.cli import main
from generator.errors import UsageError
from generator.runtimes import ReferenceRuntime
from proposals.text_pipeline import GenerationConfig
from proposals.text_pipeline.config import SamplingConfig

from .test_spine import _spec

EXAMPLES = int(os.environ.get("ROBUSTNESS_EXAMPLES", "8"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 20,  # make test: the same draws every run
    database=None,  # nothing written to .hypothesis/
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(autouse=True)
def _reference_only(monkeypatch):
    """verify runs on the reference evaluator alone: the contract is about the CLI, not the engines."""
    monkeypatch.setattr("generator.runtimes.available", lambda extra=(): [ReferenceRuntime()])


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(argv: list[str]) -> tuple[int, str]:
    """``python -m generator ARGV`` in process: (exit status, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as stop:  # --help
            status = stop.code
    return status, err.getvalue()


def _keeps_contract(status: int, err: str, argv: list[str]) -> None:
    assert status in (0, 1, 2), (argv, status, err)
    assert "Traceback" not in err, (argv, err)
    if status == 2:  # bad input: one line (exit 1 is verify's list of failing cells, on stdout)
        assert err.count("\n") == 1 and err.endswith("\n"), (argv, err)


def _changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


# --- CLI arguments ----------------------------------------------------------------------------

NAMES = st.sampled_from(["z", "x" * 256, "a\0b", "afile/sub", "afile", "deep/er/zoo", "zoo", ".", "ü", "-x"])
PATTERNS = st.sampled_from(["kv_cache/linear_prefill", "spine", "spine/affine", "nope", "../etc", "a" * 300, ""])
SECONDS = st.sampled_from(["30", "0", "-1", "nan", "inf", "1e300", "abc", "0x10"])
JUNK = st.sampled_from(
    ["--bogus", "-h", "--record", "--quick", "--cell-timeout", "0", "nan", "1e9", "--runtime", "x:Y"]
)


@st.composite
def command(draw) -> tuple[str, list[str]]:
    """A subcommand, its path options pointing into the test's folder, and some noise."""
    verb = draw(st.sampled_from(["list", "zoo", "verify", "verify"]))
    # zoo always names a case: a run of every case takes a minute
    argv = [verb, *draw(st.lists(PATTERNS, min_size=verb == "zoo", max_size=2))]
    if verb == "zoo":
        argv += ["--out", "<tmp>/" + draw(NAMES)]
    if verb == "verify":
        argv += ["--zoo", draw(st.sampled_from(["<tmp>/tiny", "<tmp>/" + draw(NAMES)]))]
        argv += ["--json", "<tmp>/" + draw(NAMES)]
        argv += draw(st.sampled_from([[], ["--baseline", "<tmp>/" + draw(NAMES)], ["--cell-timeout", draw(SECONDS)]]))
    argv += draw(st.lists(JUNK, max_size=2))
    return verb, argv


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robust") / "tiny"
    zoo.write([_spec()], out, prune=True)
    return out


@SETTINGS
@given(drawn=command())
def test_cli_arguments_keep_the_contract(tiny_zoo, drawn) -> None:
    import shutil

    verb, argv = drawn
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        shutil.copytree(tiny_zoo, tmp / "tiny")
        (tmp / "afile").write_text("keep")
        (tmp / "deep").mkdir()
        argv = [a.replace("<tmp>", scratch) for a in argv]
        before = _tree(tmp)
        status, err = _cli(argv)
        _keeps_contract(status, err, argv)
        owned = [argv[argv.index(flag) + 1] for flag in ("--out", "--json") if flag in argv]
        for path in _changed(before, _tree(tmp)):
            assert any(
                str(tmp / path).startswith(o.rstrip("/") + ("/" if verb == "zoo" else "")) or str(tmp / path) == o
                for o in owned
            ), (argv, path)


# --- manifest mutations -----------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(value, path, new):
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if new is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return copy


_DELETE = object()


@st.composite
def mutation(draw) -> tuple[str, object]:
    """A change to the tiny zoo: a manifest value replaced or deleted, a file garbled (and maybe
    rehashed), or the manifest's bytes replaced."""
    kind = draw(st.sampled_from(["value", "value", "delete", "file", "bytes", "rename"]))
    if kind == "rename":  # the case id or a file name, to something no path can hold
        return kind, (draw(st.booleans()), draw(st.sampled_from(["a" * 300, "a" * 200, "..", "a/b", "\0", "ü"])))
    if kind in ("value", "delete"):
        return kind, (draw(st.integers(0, 10_000)), _DELETE if kind == "delete" else draw(JSON))
    if kind == "file":
        name = draw(
            st.sampled_from(["model.onnx", "data.json", "test_data_set_0/input_0.pb", "test_data_set_0/output_0.pb"])
        )
        return kind, (name, draw(st.binary(max_size=40)), draw(st.booleans()))
    return kind, draw(st.sampled_from([b"", b"[" * 50_000, b"\xff\xfe", b"{}", b"null", b'{"format": 2, "cases": []}']))


def _mutate(folder: Path, kind: str, detail) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    if kind in ("value", "delete"):
        index, new = detail
        paths = [p for p in _paths(manifest) if p or new is not _DELETE]
        path.write_text(json.dumps(_replace(manifest, paths[index % len(paths)], new)))
    elif kind == "file":
        name, data, rehash = detail
        (folder / "spine" / "test_affine" / name).write_bytes(data)
        if rehash:
            manifest["cases"]["spine/affine"]["files"][name] = {"bytes": len(data), "sha256": zoo.sha256(data)}
            path.write_text(json.dumps(manifest))
    elif kind == "rename":
        case_id, name = detail
        entry = manifest["cases"].pop("spine/affine")
        if case_id:
            manifest["cases"][f"spine/{name}"] = {**entry, "name": name}
        else:
            manifest["cases"]["spine/affine"] = {**entry, "files": {**entry["files"], name: {"sha256": "0" * 64}}}
        path.write_text(json.dumps(manifest))
    else:
        path.write_bytes(detail)


@SETTINGS
@given(change=mutation())
def test_manifest_mutations_keep_the_contract(tiny_zoo, change) -> None:
    import shutil

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "tiny"
        shutil.copytree(tiny_zoo, folder)
        _mutate(folder, *change)
        before = _tree(folder)
        argv = ["verify", "--zoo", str(folder), "--json", f"{scratch}/m.json", "--baseline", f"{scratch}/b.json"]
        status, err = _cli(argv)
        _keeps_contract(status, err, argv)
        assert _tree(folder) == before  # verify never writes into the zoo


# --- server request sequences -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    from proposals.text_pipeline.folder import decoder_bytes
    from proposals.text_pipeline.serving import PagedCache, PagedServer

    return PagedServer(PagedCache(onnx.load_from_string(decoder_bytes("llama")), num_blocks=10, block_size=4))


TOKEN = st.one_of(st.integers(-2, 600), st.floats(allow_nan=True), st.booleans(), st.just(np.int64(3)))
PROMPT = st.one_of(
    st.lists(st.integers(0, 511), min_size=1, max_size=20),
    st.lists(TOKEN, max_size=6),
    st.builds(lambda xs: np.asarray(xs, np.int32), st.lists(st.integers(0, 511), min_size=1, max_size=8)),
    st.just(np.asarray([1.5, 2.0])),
    st.just("123"),
)
TEMPERATURE = st.one_of(st.just(1.0), st.floats(1e-45, 1e3), st.sampled_from([1e-40, 1e-37, 1e-30, 0.05]))


@st.composite
def request(draw):
    try:
        sampling = SamplingConfig(
            do_sample=draw(st.booleans()),
            rng_seed=draw(st.integers(0, 5)),
            temperature=draw(TEMPERATURE),
            top_k=draw(st.none() | st.integers(1, 600)),
        )
        config = GenerationConfig(
            max_new_tokens=draw(st.integers(1, 40)),
            eos_token_ids=frozenset(draw(st.sets(st.integers(0, 520), max_size=2))),
            sampling_config=sampling,
        )
    except UsageError:  # refused as a setting, in one line: nothing to serve
        config = None
    return draw(PROMPT), config, draw(st.booleans())


def _config(new: int, **sampling) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=new, sampling_config=SamplingConfig(**sampling))


# A busy pool (preemption), a sampled request whose logits turn NaN, one refused at submit.
BUSY = [
    (list(range(1, 13)), _config(20), False),
    (list(range(1, 9)), _config(16, do_sample=True, temperature=1e-30), True),
    ([7] * 14, _config(12, do_sample=True, top_k=3), False),
    ([1.7, 2], _config(3), True),
    (np.asarray([5, 6, 7], np.int64), _config(25), True),
]


@SETTINGS
@example(requests=BUSY, nan_for={1})
@example(requests=BUSY[::-1], nan_for={0})
@given(requests=st.lists(request(), min_size=1, max_size=6), nan_for=st.sets(st.integers(0, 5), max_size=1))
def test_server_request_sequences_keep_the_contract(server, requests, nan_for) -> None:
    """Requests arrive between steps; some logits are NaN (a model that overflowed)."""
    accepted, feed = [], type(server.cache).feed

    def faulty(cache, feeds):
        logits = feed(cache, feeds)
        logits[[i for i, f in enumerate(feeds) if f.seq in poisoned]] = np.nan
        return logits

    poisoned = set()
    server.cache.feed = faulty.__get__(server.cache)
    try:
        for index, (prompt, config, step_after) in enumerate(requests):
            if config is None:
                continue
            try:
                rid = server.submit(prompt, config)
            except UsageError as err:
                assert "\n" not in str(err)
            else:
                accepted.append(rid)
                if index in nan_for:
                    poisoned.add(rid)
            if step_after and (server.waiting or server.running):
                server.step()
        for _ in range(200):
            if not (server.waiting or server.running):
                break
            server.step()
    finally:
        del server.cache.feed
    done = {f.id: f for f in server.collect()}
    assert sorted(done) == sorted(accepted)
    vocab = server.cache.spec.vocab_size
    for finished in done.values():
        assert finished.finish_reason in ("eos", "stop_string", "length", "error"), finished
        assert all(0 <= t < vocab for t in finished.new_tokens)
        if finished.finish_reason == "error":
            assert finished.error and "\n" not in finished.error
    manager = server.cache.manager
    assert manager.used == 0 and sorted(manager.free) == list(range(manager.num_blocks))


# --- pipeline CLI arguments -------------------------------------------------------------------

PIPELINE_FLAGS = st.sampled_from(
    [
        ["--max-new-tokens", "2"],
        ["--max-new-tokens", "-1"],
        ["--min-new-tokens", "5", "--max-new-tokens", "2"],
        ["--sample", "--temperature", "1e-40"],
        ["--sample", "--temperature", "1e-37"],
        ["--sample", "--temperature", "nan"],
        ["--sample", "--top-k", "0"],
        ["--sample", "--top-p", "1.5"],
        ["--repetition-penalty", "inf"],
        ["--backend", "nope"],
        ["--backend", "onnxruntime-paged"],
        ["--arch", "nope"],
        ["--kv-cache", "int3"],
        ["--device", "GPU"],
        ["--stop", ""],
        ["--model-dir", "<tmp>/afile"],
        ["--model-dir", "<tmp>/" + "x" * 300],
        ["--model-dir", "<tmp>/none"],
        ["--seed", "-3"],
    ]
)


@settings(SETTINGS, max_examples=max(2, EXAMPLES // 2))
@given(prompt=st.sampled_from(["hi", "", "\udcff", "x" * 2000]), flags=st.lists(PIPELINE_FLAGS, max_size=2))
def test_pipeline_arguments_keep_the_contract(prompt, flags) -> None:
    from proposals.text_pipeline.__main__ import main as pipeline

    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "afile").write_text("keep")
        argv = [prompt, "--max-new-tokens", "2", *(f.replace("<tmp>", scratch) for pair in flags for f in pair)]
        before = _tree(Path(scratch))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = pipeline(argv)
        _keeps_contract(status, err.getvalue(), argv)
        assert _tree(Path(scratch)) == before


# --- pipeline settings ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from proposals.text_pipeline import create_pipeline
    from proposals.text_pipeline.folder import write_folder

    return create_pipeline("onnxruntime", write_folder("llama", tmp_path_factory.mktemp("pipe") / "llama"))


@st.composite
def generation_config(draw):
    """Any GenerationConfig the WG interface accepts (refused ones are the config's own one-line errors)."""
    from proposals.text_pipeline.config import BeamSearchConfig

    vocab = 512
    beams = draw(st.integers(1, 3))
    try:
        return GenerationConfig(
            max_new_tokens=draw(st.integers(1, 12)),
            min_new_tokens=draw(st.integers(0, 3)),
            eos_token_ids=frozenset(
                draw(st.one_of(st.sets(st.integers(0, vocab - 1), max_size=3), st.just(set(range(vocab)))))
            ),
            stop_strings=frozenset(draw(st.sets(st.text(min_size=1, max_size=2), max_size=2))),
            sampling_config=SamplingConfig(
                do_sample=beams == 1 and draw(st.booleans()),
                temperature=draw(TEMPERATURE),
                top_k=draw(st.none() | st.integers(1, 600)),
                top_p=draw(st.sampled_from([1.0, 0.5, 1e-9])),
                repetition_penalty=draw(st.sampled_from([1.0, 1.3, 1e-30])),
            ),
            beam_search_config=BeamSearchConfig(num_beams=beams, num_return_sequences=draw(st.integers(1, beams))),
        )
    except UsageError:
        return None


@SETTINGS
@given(
    config=generation_config(),
    prompts=st.lists(st.sampled_from(["hi", "The cache", "x" * 40, "ü"]), min_size=1, max_size=2),
)
def test_pipeline_settings_keep_the_contract(pipeline, config, prompts) -> None:
    from proposals.text_pipeline import GenerationInput

    assume(config is not None)  # else refused as a setting, in one line
    try:
        pipeline.set_generation_config(config)
        results = pipeline.generate([GenerationInput(p) for p in prompts])
    except UsageError as err:
        assert "\n" not in str(err)
        results = []
    for result in results:
        assert result.finish_reason in ("eos", "stop_string", "length")
        assert all(0 <= t < 512 for t in result.token_ids)
