"""The pipeline rival: specialists chained through text.

Each media part of a prompt is handed to the specialist run for its modality (a captioner for
images, a transcriber / sound tagger for audio, …) which writes a text description; the
descriptions replace the media, and a text-only *reasoner* run answers. Every specialist is an
ordinary polymodal run restricted to its task, built from the same backbone as the native model —
so the comparison measures the architecture, not the parts. Reads any modality, writes text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from polymodal.content import Audio, Document, Image, Message, Part, Text, Video
from polymodal.errors import ConfigError
from polymodal.generation import Generation, SamplingConfig, generate
from polymodal.run import Run

DEFAULT_INSTRUCTIONS = {
    "image": "Describe the image.",
    "audio": "Transcribe the speech or name the sound.",
    "video": "Describe the video and its sound.",
}


def _modality(part: Part) -> str | None:
    return {Image: "image", Audio: "audio", Video: "video"}.get(type(part))


@dataclass
class Pipeline:
    specialists: Mapping[str, Run]  # modality -> the run that describes it in text
    reasoner: Run  # text -> text
    instructions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))
    describe_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0, max_new_tokens=64))

    def __post_init__(self) -> None:
        for modality, run in self.specialists.items():
            if not run.supports({modality, "text"}, "text"):
                raise ConfigError(f"the {modality} specialist does not declare {modality}->text")
        if not self.reasoner.supports({"text"}, "text"):
            raise ConfigError("the reasoner does not declare text->text")

    def describe(self, part: Part) -> str:
        """The specialist's text for one media part."""
        modality = _modality(part)
        if modality not in self.specialists:
            raise ConfigError(f"this pipeline has no {modality} specialist (it has: {', '.join(self.specialists)})")
        prompt = Document.chat(("user", [part, self.instructions.get(modality, "Describe this.")]))
        return generate(self.specialists[modality], prompt, sampling=self.describe_sampling)[0].part.text

    def to_text(self, document: Document) -> Document:
        """The document with every media part replaced by ``[image: …]``-style descriptions."""
        messages = []
        for message in document.messages:
            parts = [Text(f"[{_modality(p)}: {self.describe(p)}]") if _modality(p) else p for p in message.parts]
            messages.append(Message(message.role, tuple(parts)))
        return Document(messages)

    def generate(
        self, prompts: Document | Sequence[Document], *, sampling: SamplingConfig | None = None
    ) -> list[Generation]:
        """Answer each prompt: describe its media, then let the reasoner answer in text."""
        prompts = [prompts] if isinstance(prompts, Document) else list(prompts)
        return generate(self.reasoner, [self.to_text(p) for p in prompts], output="text", sampling=sampling)
