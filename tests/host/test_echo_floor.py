"""host/serving/echo_floor.py: the bare gRPC service bench_serve measures its floor with."""

from softnpu.host.serving import echo_floor


def test_the_echo_service_answers_with_the_time_it_held():
    # latency minus hold: positive, and the hold itself is not counted (no timing bound asserted)
    assert 0 < echo_floor.overhead_ms(1000, 0.2, requests=2) < 200
