"""The trained-token loss under DDP and FSDP2: two CPU processes (gloo), the same reduced gradients
as the model's own loss over two steps, with the loss split in chunks (recomputed in backward);
FSDP2 as accelerate shards the model ([final norm, lm_head] one unit)."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_loss import batch, tiny_lora_model


def _wrap(model, mode):
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    # as accelerate 1.15's fsdp2_prepare_model shards it: each decoder layer, embed_tokens, and
    # [final norm, lm_head] as one unit kept gathered after forward, then the root
    qwen = model.base_model.model
    for layer in qwen.model.language_model.layers:
        fully_shard(layer)
    fully_shard(qwen.model.language_model.embed_tokens)
    fully_shard([qwen.model.language_model.norm, qwen.lm_head], reshard_after_forward=False)
    fully_shard(model)
    return model


def _worker(rank: int, port: int, results):
    from workbench.training import loss as loss_module
    from workbench.training.loss import TrainedTokenLoss

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    loss_module.CHUNK_ELEMENTS = 3 * 512  # chunks of 3 tokens: the recompute path
    inputs = batch(lengths=(40, 28) if rank == 0 else (30, 36))
    items = torch.tensor(20)  # trained tokens over both ranks (Trainer gathers this count)
    for mode in ("ddp", "fsdp"):
        outcome = {}
        for kind in ("full", "trained"):
            model = tiny_lora_model()
            wrapped = _wrap(model, mode)
            for _ in range(2):  # the second step meets whatever state the first left behind
                model.zero_grad(set_to_none=True)
                if kind == "full":
                    value = wrapped(**inputs, num_items_in_batch=items).loss
                else:
                    loss = TrainedTokenLoss(model)
                    forward = loss.forward_inputs(inputs)
                    labels = forward.pop("labels")
                    value = loss(wrapped(**forward), labels, items)
                value.backward()
            grads = {}
            for name, param in model.named_parameters():
                if param.requires_grad:
                    grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
                    grads[name] = grad.detach().clone()
            outcome[kind] = (float(value.detach()), grads)
        if rank == 0:
            (full, full_grads), (ours, our_grads) = outcome["full"], outcome["trained"]
            scale = max(float(g.abs().max()) for g in full_grads.values())
            diff = max(float((our_grads[n] - full_grads[n]).abs().max()) for n in full_grads)
            results[mode] = (full, ours, diff / scale, len(full_grads), TrainedTokenLoss(model).lm_head_in_forward())
    dist.destroy_process_group()


def test_ddp_and_fsdp2_gradients_match_the_full_loss():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(port, results), nprocs=2)
        results = dict(results)
    assert set(results) == {"ddp", "fsdp"}
    for mode, (full, ours, relative_diff, count, in_forward) in results.items():
        assert abs(ours - full) < 1e-5 * abs(full), mode
        assert count > 10 and relative_diff < 1e-5, (mode, relative_diff)
        assert in_forward == (mode == "fsdp")  # lm_head inside the forward for FSDP2 units
