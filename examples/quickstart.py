"""Build a small Transformer, generate with it, save it as shareable remote code and load it back."""

import tempfile

import torch
from transformers import AutoModelForSeq2SeqLM

from modeling_vanilla import VanillaConfig, VanillaForConditionalGeneration

config = VanillaConfig(vocab_size=1000, d_model=64, num_heads=4, d_ff=256, encoder_layers=2, decoder_layers=2)
model = VanillaForConditionalGeneration(config).eval()
source = torch.randint(3, 1000, (2, 10))
print("beam search:", model.generate(source, num_beams=4, length_penalty=0.6, max_new_tokens=8).tolist())

VanillaConfig.register_for_auto_class()
VanillaForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    same = torch.equal(loaded(source, decoder_input_ids=source).logits, model(source, decoder_input_ids=source).logits)
    print(f"reloaded {type(loaded).__name__} from {folder}; identical logits: {same}")
