"""Reading vLLM's /metrics: the three gauges the router uses, from real exposition text."""

from __future__ import annotations

from gateway.routing.monitor import parse_vllm_metrics
from loadtest.vllm_sim.config import SimConfig
from loadtest.vllm_sim.engine import SimState

# vLLM V1 with two data-parallel engines, histogram noise, and a name that extends ours.
TWO_ENGINES = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 7.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 5.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 3.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.5
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="Qwen/Qwen2.5-7B-Instruct"} 0.0
"""

# vLLM V0 named the KV gauge gpu_cache_usage_perc; labels are optional in the format.
V0 = b"""vllm:num_requests_running 2
vllm:num_requests_waiting 1
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
"""


def test_two_engines_sum_queues_and_keep_the_fullest_cache() -> None:
    assert parse_vllm_metrics(TWO_ENGINES) == (12.0, 3.0, 0.5)


def test_v0_names_and_unlabelled_samples() -> None:
    assert parse_vllm_metrics(V0) == (2.0, 1.0, 0.75)


def test_not_vllm() -> None:
    assert parse_vllm_metrics(b"# nothing here\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_vllm_metrics(b"") is None


def test_the_simulators_page() -> None:
    sim = SimState(SimConfig(capacity=4, max_model_len=1000))
    sim.scheduler.running, sim.scheduler.waiting = 4, 6
    sim.count_prompt(1000)
    assert parse_vllm_metrics(sim.metrics_text()) == (4.0, 6.0, 0.25)
