"""`diffedit edit --source auto`, `--instruction` and `--source-set/--target-set`: their options, their checks before a
model loads, and the prompts derived once it has (diffedit.prompts_auto, diffedit.prompt_sets)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from diffedit.cli.checks import nothing_to_edit
from diffedit.cli.common import fail

__all__ = ["INSTRUCTION_OPTION", "CAPTIONER_OPTION", "SOURCE_SET_OPTION", "TARGET_SET_OPTION", "PROMPT_LM_OPTION",
           "PromptRequest"]

AUTO, ZERO_SHOT = "auto", "shapeworld"  # prompts_auto's, without importing torch before the checks
PROMPTS = "Prompts"

INSTRUCTION_OPTION = typer.Option(
    None, "--instruction", help="Instead of --target: 'make the red circle blue', 'turn the circle into a square'... "
    "(ShapeWorld captions; the source is captioned unless --source is given). docs/prompts.md", rich_help_panel=PROMPTS,
)
CAPTIONER_OPTION = typer.Option(
    None, "--captioner", help="For --source auto: a local transformers image-to-text folder (BLIP), or 'shapeworld' "
    "(the zero-shot captioner; the default with the embedded model).", rich_help_panel=PROMPTS,
)
SOURCE_SET_OPTION = typer.Option(
    None, "--source-set", help="Instead of --source: a file of sentences (one a line), or a concept word (sentences from "
    "templates, or from --prompt-lm); their text embeddings averaged.", rich_help_panel=PROMPTS,
)
TARGET_SET_OPTION = typer.Option(None, "--target-set", help="Instead of --target: as --source-set.", rich_help_panel=PROMPTS)
PROMPT_LM_OPTION = typer.Option(
    None, "--prompt-lm",
    help="A local seq2seq language model folder (Flan-T5): writes a concept word's sentences, and rewrites a caption by "
    "--instruction where the rules cannot.",
    rich_help_panel=PROMPTS,
)


def _is_file(value: str) -> bool:
    return Path(value).is_file()


@dataclass
class PromptRequest:
    """The prompt options of one `diffedit edit`."""

    source: str | None
    targets: list[str]
    instruction: str | None = None
    captioner: str | None = None
    source_set: str | None = None
    target_set: str | None = None
    prompt_lm: str | None = None

    def check(self) -> tuple[str, list[str]]:
        """Before the model loads (exit 2): one way to give each prompt, a readable instruction and set files, existing
        folders. Returns (source, targets) to check as text, with stand-ins where they are derived."""
        from diffedit.instructions import parse_instruction
        from diffedit.prompt_sets import read_prompt_set

        given = [n for n, v in (("--target", self.targets), ("--instruction", self.instruction),
                                ("--target-set", self.target_set)) if v]
        if len(given) != 1:
            fail(f"give one of --target (repeatable), --instruction, --target-set{'; got ' + ', '.join(given) if given else ''}")
        if (self.source is None) == (self.source_set is None) and not (self.source is None and self.instruction):
            fail("give --source (or --source auto to caption the image) or --source-set, one of the two")
        if self.instruction is not None and self.source_set is not None:
            fail("--instruction rewrites a caption: give --source (or --source auto), not --source-set")
        try:
            parse_instruction(self.instruction) if self.instruction is not None and self.prompt_lm is None else None
            for value in (self.source_set, self.target_set):
                read_prompt_set(value) if value and _is_file(value) else None
        except ValueError as e:
            fail(str(e))
        for flag, folder in (("--captioner", None if self.captioner == ZERO_SHOT else self.captioner),
                             ("--prompt-lm", self.prompt_lm)):
            if folder is not None and not Path(folder).is_dir():
                fail(f"{flag} {folder}: not a folder (a local transformers model)")
        source = self.source if self.source is not None else AUTO if self.source_set is None else "<source set>"
        return source, self.targets or [self.instruction or "<target set>"]

    def derive(self, editor, image, seed: int | None, quiet: bool) -> tuple:
        """(source, targets, the sidecar's "prompts" record or None) once the editor is loaded; exit 2 when a caption,
        the instruction or a set fails, exit 3 when a derived target equals the source."""
        if self.source != AUTO and self.instruction is None and not (self.source_set or self.target_set):
            return self.source, self.targets, None
        try:
            source, targets, record = self._derive(editor, image, seed or 0)
        except (ValueError, OSError) as e:
            fail(str(e))
        if isinstance(source, str) and all(isinstance(t, str) for t in targets):
            nothing_to_edit(source, targets)
        if not quiet:
            for what, made, prompt in [("source", record["source_from"], source)] + [
                    ("target", record["target_from"], t) for t in targets]:
                typer.echo(f"{what} ({made}): {prompt if isinstance(prompt, str) else 'the mean of a prompt set'}")
        return source, targets, record

    def _derive(self, editor, image, seed: int):
        from diffedit.captioning import ImageToTextCaptioner
        from diffedit.prompt_sets import Seq2SeqPrompter
        from diffedit.prompts_auto import derive_prompts

        record: dict = {}
        source = self._set(editor, self.source_set, "source", record) if self.source_set else self.source
        targets = [self._set(editor, self.target_set, "target", record)] if self.target_set else self.targets
        if source == AUTO or self.instruction is not None:
            captioner = self.captioner
            if captioner not in (None, ZERO_SHOT):
                captioner = ImageToTextCaptioner.from_pretrained(captioner, device=editor.device)
            rewriter = None
            if self.instruction is not None and self.prompt_lm is not None:  # rules first, the model where they fail
                rewriter = Seq2SeqPrompter.from_pretrained(self.prompt_lm, device=editor.device).rewrite
            derived = derive_prompts(editor, image, source=source, instruction=self.instruction, captioner=captioner,
                                     target=None if self.instruction else targets, seed=seed, rewriter=rewriter)
            source, targets = derived.source, derived.targets
            record = {**derived.record, **record}
        record.setdefault("source_from", "given")
        record.setdefault("target_from", "given")
        return source, targets, record

    def _set(self, editor, value: str, what: str, record: dict):
        """The mean embedding of a prompt set; its sentences and how they were made go to the record."""
        from diffedit.prompt_sets import Seq2SeqPrompter, mean_embedding, read_prompt_set, template_prompts

        if _is_file(value):
            sentences, made = read_prompt_set(value), "set file"
        elif self.prompt_lm is not None:
            sentences = Seq2SeqPrompter.from_pretrained(self.prompt_lm, device=editor.device)(value)
            made = "language model"
        else:
            sentences, made = template_prompts(value), "templates"
        record.update({f"{what}_from": made, f"{what}_set": sentences})
        return mean_embedding(editor.components, sentences)
