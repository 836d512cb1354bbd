"""Build a tiny random-weight Llama model directory that vLLM (CPU build) can serve.

Nothing is downloaded: the byte-level BPE tokenizer is trained here on a corpus generated
here, the weights are random (seeded), and both are written with ``save_pretrained``:

    python scripts/e2e/build_tiny_model.py OUT_DIR

Run it with the e2e environment's Python (scripts/e2e/venv), which has torch, transformers
and tokenizers. The same OUT_DIR is the gateway's estimating tokenizer for the model
(models.yaml ``tokenizer: hf:OUT_DIR``); the gateway reads only its ``tokenizer.json``.

Shape: hidden 128, 2 layers, 2 heads of dimension 64 (vLLM's CPU attention kernel refuses a
head dimension of 16), float32, context 8192. Its output is noise, but its token counts,
SSE, usage blocks and ``/metrics`` are vLLM's own, which is all the e2e tier needs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SEED = 20240601
VOCAB_SIZE = 2048
CONTEXT = 8192

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]

# Roles with a special token use it; any other role is spelled out. The assistant's turn
# ends with <|end|> followed by EOS, so a (trained) model would stop there.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% else %}{{ '<|user|>' + message['role'] + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>' }}{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_WORD_LIST = """
the a an of to in and or for with on at by from as is are was were be been being have has
had do does did will would can could should may might must shall not no yes this that these
those it its they them their we our you your he she his her i me my river mountain city
cluster gateway token tokens model models request response stream streaming usage billing
credit credits balance account key keys quota limit limits rate minute second hour day week
month year time money price prices package packages customer customers team teams server
servers network memory cache queue batch prompt prompts completion completions chat message
messages system user assistant tool function call result error errors retry timeout health
metric metrics latency throughput compute data record records ledger entry entries sum total
count number first last next previous new old big small fast slow high low good bad simple
hard easy open close start stop read write send receive run runs running ran wait waits
yangtze wuhan yichang hubei east west north south spring summer autumn winter water light
sound text word words sentence story once upon there lived little green blue red white black
one two three four five six seven eight nine ten hundred thousand million
"""
_WORDS = _WORD_LIST.split()
_PUNCT = [".", ",", "!", "?", ";", ":"]


def corpus(lines: int = 6000) -> list[str]:
    """A deterministic English-like corpus with digits, punctuation, code and some non-ASCII."""
    rnd = random.Random(SEED)
    out = []
    for _ in range(lines):
        words = [rnd.choice(_WORDS) for _ in range(rnd.randint(4, 18))]
        if rnd.random() < 0.2:
            words.insert(rnd.randrange(len(words)), str(rnd.randint(0, 99999)))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rnd.choice(_PUNCT))
    out += [
        'def f(x):\n    return {"usage": x, "tokens": [1, 2, 3]}\n',
        "Hello! How are you today? I'm fine, thanks.",
        "长江 武汉 宜昌 湖北 — café naïve 🙂 ümlaut",
        "The quick brown fox jumps over the lazy dog. 0123456789",
    ] * 20
    return out


def build_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Completions prompts get a BOS, as most real models' tokenizers add one.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        ),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=CONTEXT,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return len(fast)


def build_model(out: Path, vocab: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write (created; must be empty or absent)")
    args = parser.parse_args(argv)
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        print(f"{out} exists and is not empty", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out)
    build_model(out, vocab)
    (out / "tokengate-e2e.json").write_text(
        json.dumps({"builder": "scripts/e2e/build_tiny_model.py", "seed": SEED, "vocab": vocab}) + "\n",
        encoding="utf-8",
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
