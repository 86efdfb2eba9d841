"""The evaluated model as lm-eval sees it: lm-eval's ``HFLM``, with the protocol's ``stop_after_text`` stops."""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM
from transformers import LogitsProcessorList, StoppingCriteriaList

from .stops import NoEndBeforeText, StopAfterText


class ProtocolLM(HFLM):
    """``HFLM`` whose generation honours the ``stop_after_text`` generation keyword (the protocol's stop
    sequences, matched only after the completion's leading whitespace, and no end-of-sequence before it:
    ``spiel.evaluate.stops``)."""

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        after_text = generation_kwargs.pop("stop_after_text", None)
        if not after_text:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        # HFLM._model_generate's decoding settings (greedy unless sampling), with this stopping criterion
        if not generation_kwargs.get("do_sample"):
            generation_kwargs.pop("temperature", None)
            generation_kwargs["do_sample"] = False
        criteria = StoppingCriteriaList([StopAfterText(self.tokenizer, [*after_text, *stop], context.shape[1])])
        ends = self.model.generation_config.eos_token_id
        ends = {self.tokenizer.eos_token_id, *(ends if isinstance(ends, list) else [ends])} - {None}
        processors = LogitsProcessorList([NoEndBeforeText(self.tokenizer, sorted(ends), context.shape[1])])
        return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                   logits_processor=processors, pad_token_id=self.tokenizer.pad_token_id,
                                   use_cache=True, **generation_kwargs)
