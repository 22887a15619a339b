"""S3ClientConfig: reference defaults, validation naming the field, pickling."""
import dataclasses
import pickle

import pytest

from s3io import S3ClientConfig

MIB = 1024 * 1024


def test_defaults_match_the_reference():
    config = S3ClientConfig()
    assert config.throughput_target_gbps == 10.0
    assert config.part_size == 8 * MIB
    assert config.unsigned is False
    assert config.force_path_style is False
    assert config.max_attempts == 10
    assert config.profile is None
    assert config.requester_pays is False
    assert config.endpoint_url is None
    assert config.connect_timeout > 0 and config.read_timeout > 0


def test_concurrency_is_derived_from_the_throughput_target_unless_given():
    assert S3ClientConfig(throughput_target_gbps=10.0).max_concurrency == 13
    assert S3ClientConfig(throughput_target_gbps=100.0).max_concurrency > S3ClientConfig().max_concurrency
    assert S3ClientConfig(throughput_target_gbps=0.1).max_concurrency == 2
    assert S3ClientConfig(max_concurrency=3).max_concurrency == 3


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        S3ClientConfig().part_size = 16 * MIB


def test_pickles_and_compares():
    config = S3ClientConfig(part_size=16 * MIB, profile="p", endpoint_url="http://127.0.0.1:9000")
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"part_size": 5 * MIB - 1}, "part_size"),
        ({"part_size": 5 * 1024 * MIB + 1}, "part_size"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"throughput_target_gbps": 0}, "throughput_target_gbps"),
        ({"throughput_target_gbps": float("nan")}, "throughput_target_gbps"),
        ({"connect_timeout": -1}, "connect_timeout"),
        ({"read_timeout": 0}, "read_timeout"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"endpoint_url": "localhost:9000"}, "endpoint_url"),
    ],
)
def test_invalid_values_raise_valueerror_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        S3ClientConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"part_size": 8.0 * MIB}, "part_size"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"unsigned": 1}, "unsigned"),
        ({"force_path_style": "yes"}, "force_path_style"),
        ({"profile": 3}, "profile"),
        ({"max_concurrency": True}, "max_concurrency"),
    ],
)
def test_wrong_types_raise_typeerror_naming_the_field(kwargs, field):
    with pytest.raises(TypeError, match=field):
        S3ClientConfig(**kwargs)


def test_part_size_limits_are_inclusive():
    assert S3ClientConfig(part_size=5 * MIB).part_size == 5 * MIB
    assert S3ClientConfig(part_size=5 * 1024 * MIB).part_size == 5 * 1024 * MIB
