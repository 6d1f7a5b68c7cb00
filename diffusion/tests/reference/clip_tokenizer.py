"""Reference token ids for genlab's CLIP BPE tokenizer (diffusion/tests/clip_tokenizer.rs).

Tokenises a fixed list of prompts with open_clip's SimpleTokenizer (the OpenAI CLIP
tokenizer) on its own vocabulary file and writes clip_tokenizer.json beside this script:
for every prompt, the ids without special tokens and the 77-long sequence Stable Diffusion's
tokenizer gives (start token, at most 75 ids, end token, then padding with the end token).

Needs: open-clip-torch==3.3.0 (for open_clip/tokenizer.py and bpe_simple_vocab_16e6.txt.gz),
ftfy, regex, torch, numpy. Run: python clip_tokenizer.py
"""
import json
import os

from open_clip.tokenizer import SimpleTokenizer

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on the moon, highly detailed, 4k",
    "don't we'll they're I'm you've she'd it's",
    "   lots\tof \n whitespace   ",
    "a café in Zürich at night",
    "日本の桜",
    "emoji 🐱🚀 and symbols #1 @home $5 100% (parentheses) [brackets]",
    "3.14159 and 2026-11-25",
    "Tom &amp; Jerry &lt;3",
    "",
    " ".join(["word"] * 100),
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a painting of a fox in the style of van gogh, trending on artstation",
]


def main():
    tok = SimpleTokenizer()
    sot, eot = tok.sot_token_id, tok.eot_token_id
    out = {"sot": sot, "eot": eot, "vocab_size": tok.vocab_size, "cases": []}
    for p in PROMPTS:
        ids = tok.encode(p)
        padded = [sot] + ids[:75] + [eot]
        padded += [eot] * (77 - len(padded))
        out["cases"].append({"prompt": p, "ids": ids, "padded": padded, "decoded": tok.decode(ids)})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    print(f"wrote {len(PROMPTS)} cases to {path}")


if __name__ == "__main__":
    main()
