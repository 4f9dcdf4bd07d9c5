"""The workbench's Trainer: transformers' Trainer with the loss on trained tokens, one optimizer
group per trained part, a checkpoint noted before it is written, and a stop on a non-finite loss.

Built inside a function so that importing the job does not import transformers.
"""

from __future__ import annotations

from workbench.live_lock import ensure_held
from workbench.run_folder import RunFolder
from workbench.training.bridge import NonFiniteError


def trainer_class():
    import torch
    from transformers import Trainer

    from workbench.training.loss import TrainedTokenLoss

    class WorkbenchTrainer(Trainer):
        """Trainer that stops on a non-finite raw loss (the logged loss filters NaN away) and, unless
        told otherwise, computes the loss on trained tokens only (``workbench.training.loss``)."""

        def __init__(self, *args, loss_on_trained_tokens_only: bool = True, part_rates=None, answer_check=None,
                     **kwargs):
            if loss_on_trained_tokens_only:
                kwargs["compute_loss_func"] = TrainedTokenLoss(kwargs["model"] if "model" in kwargs else args[0])
            self.part_rates = part_rates  # {vision, merger, language: learning rate}; None: one rate
            self.answer_check = answer_check  # workbench.training.evaluation.AnswerCheck: the task metric
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            """One parameter group per part (vision tower, merger, language model) and decay kind;
            Trainer's own create_optimizer then finishes the job as it does for its two groups."""
            if self.optimizer is None and self.part_rates is not None:
                from workbench.training.parts import part_optimizer

                self.optimizer = part_optimizer(self, self.model if model is None else model)
            return super().create_optimizer(model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if isinstance(self.compute_loss_func, TrainedTokenLoss) and "labels" in inputs:
                inputs = self.compute_loss_func.forward_inputs(inputs)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            """Trainer's eval loss, then the task metric on held-out answers, in the same metrics: logged
            together, and ``metric_for_best_model`` (eval_score) picks the best checkpoint from them."""
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            if self.answer_check is not None and metric_key_prefix == "eval":
                output.metrics.update(self.answer_check.run(self.model))
            return output

        def _save_checkpoint(self, model, trial):
            # recorded first: after a kill mid-write, resume knows this half-written folder is its own
            if self.is_world_process_zero():
                ensure_held(self.args.output_dir)
                RunFolder(self.args.output_dir).note_checkpoint_started(self.state.global_step)
            return super()._save_checkpoint(model, trial)

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not bool(torch.isfinite(loss).all()):
                raise NonFiniteError(f"loss became {float(loss.detach().float().mean())} at step {self.state.global_step + 1}")
            return loss

    return WorkbenchTrainer
