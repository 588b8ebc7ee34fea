"""Shapes training: [SEG] query extraction, losses, and a step that learns."""

from __future__ import annotations

import math

import pytest
import torch

from altp.models.glamm import GLaMM
from altp.models.glamm_build import shapes_config
from altp.models.tokenizer import TINY_TOKENIZER_DIR, load_glamm_tokenizer
from altp.train.loop import TrainConfig, make_optimizer, train_step
from altp.train.losses import answer_states, dice_loss, forward_losses, seg_queries
from altp.train.samples import collate, render_sample


def _toy_model(seed: int = 0) -> GLaMM:
    tok, ids = load_glamm_tokenizer(TINY_TOKENIZER_DIR)
    torch.manual_seed(seed)
    cfg = shapes_config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                        clip_hidden_size=16, clip_layers=2, sam_image_size=64, sam_hidden_size=16, sam_layers=1,
                        prompt_dim=16)
    return GLaMM(config=cfg, tokenizer=tok, token_ids=ids, name="toy", max_new_tokens=8)


@pytest.fixture(scope="module")
def toy():
    model = _toy_model()
    samples = [render_sample(seed=0, index=i) for i in range(2)]
    batch = collate(samples, tok=model.tokenizer, ids=model.token_ids, sam=model.grounding_encoder)
    return model, batch


def test_seg_queries_are_the_states_of_the_token_before_each_seg(toy):
    """Oracle: one plain forward over the whole sequence; the state at (position of [SEG]) - 1."""
    model, batch = toy
    model.eval()
    with torch.no_grad():
        states = answer_states(model, batch)
        queries = seg_queries(states, batch.target_ids, batch.target_valid, model.token_ids.seg)
        for b in range(2):
            visual = model.encode_image(batch.clip_pixels[b : b + 1])
            prompt = model.build_inputs_embeds(visual)  # (1, L0, D)
            answer = model.llm.get_input_embeddings()(batch.target_ids[b : b + 1])
            full = model.llm(inputs_embeds=torch.cat([prompt, answer], 1), output_hidden_states=True)
            last = full.hidden_states[-1][0]  # (L0 + T, D)
            seq_ids = [-1] * prompt.shape[1] + batch.target_ids[b].tolist()
            n_valid = int(batch.target_valid[b].sum())
            seg_pos = [p for p, t in enumerate(seq_ids[: prompt.shape[1] + n_valid]) if t == model.token_ids.seg]
            assert len(seg_pos) == queries[b].shape[0] == batch.gt_masks[b].shape[0]
            expected = last[[p - 1 for p in seg_pos]]
            torch.testing.assert_close(queries[b], expected, rtol=1e-4, atol=1e-5)
            # and the logits of those states are the ones that score [SEG] as the next token
            torch.testing.assert_close(model.llm.lm_head(queries[b]), full.logits[0, [p - 1 for p in seg_pos]],
                                       rtol=1e-4, atol=1e-5)


def test_dice_loss_hand_computed():
    big = 50.0  # sigmoid(50) == 1 in float32
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    same = torch.tensor([[[big, big], [-big, -big]]])
    disjoint = -same
    assert dice_loss(same, target).item() == pytest.approx(0.0, abs=1e-6)
    # p = 1 on the 2 empty pixels: 1 - (0 + 1) / (2 + 2 + 1)
    assert dice_loss(disjoint, target).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_training_steps_reduce_both_losses_on_a_fixed_batch(toy):
    _, batch = toy
    model = _toy_model(seed=1)
    torch.manual_seed(0)
    cfg = TrainConfig(lr=3e-3, warmup=1)
    opt = make_optimizer(model, cfg)
    first = train_step(model, opt, batch, cfg, lr=3e-3)
    for _ in range(7):
        last = train_step(model, opt, batch, cfg, lr=3e-3)
    after = forward_losses(model, batch)
    assert math.isfinite(first["loss"]) and math.isfinite(last["loss"])
    assert float(after["lm"]) < 0.9 * first["lm"]  # chance level is ln(vocab) = 6.7
    assert float(after["bce"]) < first["bce"]
    assert float(after["loss"].detach()) < first["loss"]
