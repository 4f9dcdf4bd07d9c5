"""Memory planner: per-GPU memory of a LoRA training step with device_map, DDP and FSDP2, and
the fastest strategy that fits.

    from workbench.planner import PlanRequest, plan_memory
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4xA800-40GB"), nodes=2))
    plan.strategy, plan.strategies, plan.fits, plan.devices, plan.device_map, plan.to_json()

Terms (one function each, with its formula) live in ``terms``; units of a model in
``layout``; the request, its defaults and the step shape in ``request``; per-device sums
and the maps (the planner's packer, accelerate's map with the planner's budgets,
accelerate's plain ``auto``) in ``device_map``; ddp and fsdp rows in ``strategies``; the
speed model in ``speed``; the strategies side by side and the choice in ``compare``; the
shared searches in ``search``; the plan in ``plan``; suggestions in ``suggest``; tables and
sentences for people in ``report``.
"""

from workbench.planner.plan import Plan, plan_memory
from workbench.planner.report import format_plan, map_ranges
from workbench.planner.request import PlanRequest, request_defaults

__all__ = ["Plan", "PlanRequest", "plan_memory", "format_plan", "map_ranges", "request_defaults"]
