"""A model folder's chat template applied to a user message, as transformers'
``apply_chat_template(..., add_generation_prompt=True)`` renders it (a sandboxed Jinja
environment with the same whitespace rules), so the prompt text is the checkpoint's own."""

from __future__ import annotations

from pathlib import Path

from generator.errors import UsageError
from proposals.text_pipeline.folder import PIPELINE_FILE, inside_folder, read_manifest
from proposals.text_pipeline.tokenizer import load_tokenizer


def _raise(message: str):
    raise UsageError(f"the chat template refused the conversation: {message}")


# --8<-- [start:chat_prompt]
def chat_prompt(folder: str | Path, message: str) -> str:
    """The prompt text for one user ``message`` under the chat template of the model folder
    (its ``pipeline.json`` names the template, the tokenizer and the special token ids)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folder = Path(folder)
    manifest = read_manifest(folder / PIPELINE_FILE)
    name = manifest.get("chat_template")
    if not isinstance(name, str):
        raise UsageError(f"{folder}: {PIPELINE_FILE} names no chat template (a base model?); drop --chat")
    template = inside_folder(folder, name, f"{folder / PIPELINE_FILE}: chat_template {name!r}").read_text(
        encoding="utf-8"
    )
    tokenizer = load_tokenizer(inside_folder(folder, manifest["tokenizer"], "tokenizer").read_bytes())
    special = manifest.get("special_tokens", {})
    bos, eos = (
        tokenizer.id_to_token(special[key]) or "" if special.get(key) is not None else ""
        for key in ("bos_token_id", "eos_token_id")
    )
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    text = env.from_string(template).render(
        messages=[{"role": "user", "content": message}], add_generation_prompt=True, bos_token=bos, eos_token=eos
    )
    if bos and special.get("adds_bos_token") and text.startswith(bos):
        text = text[len(bos) :]  # the tokenizer adds BOS itself when the prompt is encoded
    return text


# --8<-- [end:chat_prompt]
