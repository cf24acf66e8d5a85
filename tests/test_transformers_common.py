"""transformers' own common model and config tests, run on this model as test_modeling_marian.py runs them on Marian.

The mixins come from the sdist of the installed transformers (tests/transformers_suite.py); every test this class
skips is listed with its reason in the README's testing section.
"""

import unittest
from unittest import mock

import pytest
from transformers.models.auto import modeling_auto
from transformers_suite import FetchError, import_suite

from configuration_vanilla import VanillaConfig
from modeling_vanilla import VanillaForConditionalGeneration, VanillaModel

pytestmark = pytest.mark.slow  # transformers' common model tests: over a thousand subtests

try:
    modeling_common, configuration_common = import_suite()
except FetchError as error:
    pytest.skip(str(error), allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
GenerationTesterMixin = modeling_common.GenerationTesterMixin
ids_tensor = modeling_common.ids_tensor
ConfigTester = configuration_common.ConfigTester


class VanillaModelTester:
    """Tiny configs and random batches for the mixins: two encoder and two decoder layers of width 16."""

    def __init__(self, parent, batch_size: int = 3, seq_length: int = 7, vocab_size: int = 40):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = 16
        self.num_attention_heads = 4
        self.num_hidden_layers = 2
        self.is_training = True
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def get_config(self) -> VanillaConfig:
        return VanillaConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            num_heads=self.num_attention_heads,
            d_ff=32,
            encoder_layers=self.num_hidden_layers,
            decoder_layers=self.num_hidden_layers,
            max_position_embeddings=64,
            dropout=0.1,
            # The mixins check the loss against plain cross-entropy; the smoothed loss (sec. 5.4) has its own test.
            label_smoothing=0.0,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            decoder_start_token_id=self.bos_token_id,
        )

    def prepare_config_and_inputs(self) -> tuple[VanillaConfig, dict]:
        # Token ids from 3 up keep pad, BOS and EOS out of the body; every source ends in EOS, as the tokenizer makes.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        input_ids[:, -1] = self.eos_token_id
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(3)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": input_ids.ne(self.pad_token_id),
            "decoder_input_ids": decoder_input_ids,
            "decoder_attention_mask": decoder_input_ids.ne(self.pad_token_id),
        }
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[VanillaConfig, dict]:
        return self.prepare_config_and_inputs()


class VanillaCommonTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (VanillaModel, VanillaForConditionalGeneration)
    is_encoder_decoder = True
    # The mixin dates a model by a copyright line in its config file and leaves pre-2023 ones out of this check.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The mixins tell a base model from a model with a head by its class name in transformers' tables of
        # built-in models (base models skip the training tests, seq2seq LM heads get labels); enter ours there.
        for table, name in [
            (modeling_auto.MODEL_MAPPING_NAMES, VanillaModel.__name__),
            (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, VanillaForConditionalGeneration.__name__),
        ]:
            patcher = mock.patch.dict(table, {VanillaConfig.model_type: name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = VanillaModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VanillaConfig, d_model=16, num_heads=4)

    def test_config(self):
        self.config_tester.run_common_tests()
