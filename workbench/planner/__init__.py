"""Memory planner: per-GPU memory of a LoRA training step with device_map, and the map.

    from workbench.planner import PlanRequest, plan_memory
    plan = plan_memory(PlanRequest("qwen2-vl-72b-instruct", parse_gpu_spec("4x40GiB")))
    plan.fits, plan.devices, plan.device_map, plan.to_json()

Terms (one function each, with its formula) live in ``terms``; units of a model in
``layout``; per-device sums and the maps (the planner's packer, accelerate's map with
the planner's budgets, accelerate's plain ``auto``) in ``device_map``; the search for the
largest fitting max_length and batch size in ``plan``; suggestions in ``suggest``;
tables and map ranges for people in ``report``.
"""

from workbench.planner.plan import Plan, PlanRequest, plan_memory
from workbench.planner.report import format_plan, map_ranges

__all__ = ["Plan", "PlanRequest", "plan_memory", "format_plan", "map_ranges"]
