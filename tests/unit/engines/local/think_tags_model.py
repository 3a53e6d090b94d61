"""A tiny random ``think-tags`` checkpoint (Qwen3-style chat template) for the local engine's tests.

Byte-level BPE without merges (256 byte tokens) plus the ChatML delimiters as special tokens, and -- when
``markers`` -- ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>`` as single added tokens (not special,
as in Qwen3's tokenizer). Without ``markers`` those tags are spelled byte by byte, like a tokenizer that lacks
them. ``opens_thinking``: the generation prompt ends with ``<think>\\n`` (DeepSeek-R1 / Qwen3-thinking style).
A one-layer Llama with random weights: gibberish output, real shapes. Built offline in a few hundred ms.
"""

from __future__ import annotations

from pathlib import Path

TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")

_TEMPLATE = """\
{%- if tools -%}
<|im_start|>system
# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% endif -%}
{%- for m in messages -%}
{%- if m.role == 'assistant' -%}
<|im_start|>assistant
{% if m.reasoning_content %}<think>
{{ m.reasoning_content }}
</think>

{% endif %}{{ m.content or '' }}
{%- for tc in m.tool_calls or [] %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments }}}
</tool_call>{% endfor %}<|im_end|>
{% else -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% if OPENS %}<think>
{% elif enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}
{%- endif -%}
"""


def build_think_tags_checkpoint(path: Path, *, markers: bool = True, opens_thinking: bool = False) -> Path:
    """Write the checkpoint into ``path`` (created) and return it."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    if markers:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = _TEMPLATE.replace("OPENS", "true" if opens_thinking else "false")
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(path))
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path
