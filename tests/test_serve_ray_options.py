"""The Ray application builder's arguments: every option's string form (``serve run ... name=value``) and typed form
(a config file, Python) parsed as what it says, and refused when it says nothing of its type. No Ray instance is
started."""
import dataclasses

import pytest

pytest.importorskip('ray.serve')

from scalavit.serve.ray import ReplicaOptions, Scaling, deployment_options, parse_arguments  # noqa: E402
from scalavit.serve.service import Settings  # noqa: E402

FALSE = ['false', 'False', 'FALSE', '0', 'no', 'off', 'n', 'f', False, 0]
TRUE = ['true', 'True', '1', 'yes', 'on', 'y', 't', True, 1]

# option -> (what `serve run` passes, the value it means), for every option the builder takes
STRING_FORMS = {
    'slo_ms': ('50', 50.0), 'policy': ('fixed:0.5', 'fixed:0.5'), 'max_batch_size': ('16', 16),
    'max_queue': ('100', 100), 'max_body_bytes': ('1048576', 1048576), 'profile_repeats': ('5', 5),
    'max_pixels': ('1000000', 1000000), 'decode_threads': ('2', 2), 'stall_s': ('2.5', 2.5),
    'served_model_name': ('fashion', 'fashion'), 'profile_cache': ('/tmp/profiles', '/tmp/profiles'),
    'use_profile_cache': ('no', False), 'switch_interval_ms': ('1', 1.0),
    'device': ('cuda:1', 'cuda:1'), 'model': ('scala_vit_tiny_patch7_56', 'scala_vit_tiny_patch7_56'),
    'backend': ('onnxruntime', 'onnxruntime'), 'compile_cache': ('/tmp/cache', '/tmp/cache'),
    'data': ('/data/images', '/data/images'), 'threads': ('3', 3), 'drain_timeout': ('4', 4.0),
    'trust_checkpoint': ('true', True),
    'replicas': ('3', 3), 'min_replicas': ('0', 0), 'max_replicas': ('4', 4),
}
BAD_STRINGS = {
    'slo_ms': 'soon', 'max_batch_size': '16.5', 'max_queue': 'many', 'max_body_bytes': '1e', 'profile_repeats': '-1',
    'max_pixels': '0', 'decode_threads': 'auto', 'stall_s': 'never', 'switch_interval_ms': '0', 'threads': '0', 'drain_timeout': '-4',
    'trust_checkpoint': 'maybe', 'use_profile_cache': 'sometimes', 'backend': 'tensorrt', 'replicas': 'two', 'min_replicas': '-1', 'max_replicas': '0',
}


def where(name, checkpoint, settings, options, scaling):
    for group in (settings, options, scaling):
        if name in {f.name for f in dataclasses.fields(group)}:
            return getattr(group, name)
    raise AssertionError(f'{name} went nowhere')


def test_every_option_is_covered_here():
    names = {f.name for kind in (Settings, ReplicaOptions, Scaling) for f in dataclasses.fields(kind)}
    assert names == set(STRING_FORMS)


@pytest.mark.parametrize('name', sorted(STRING_FORMS))
def test_each_options_string_form_is_parsed_as_what_it_says(name):
    text, meant = STRING_FORMS[name]
    parsed = parse_arguments({'checkpoint': 'runs/x', name: text})
    value = where(name, *parsed)
    assert value == meant and type(value) is type(meant)


@pytest.mark.parametrize('name', sorted(BAD_STRINGS))
def test_each_options_nonsense_is_refused_naming_the_option(name):
    with pytest.raises(ValueError, match=f"bad argument: .*{name.replace('_', '[-_]')}"):
        parse_arguments({'checkpoint': 'runs/x', name: BAD_STRINGS[name]})


@pytest.mark.parametrize('text', FALSE)
def test_trust_checkpoint_false_in_any_spelling_never_unpickles(text):
    _, _, options, _ = parse_arguments({'checkpoint': 'runs/x', 'trust_checkpoint': text})
    assert options.trust_checkpoint is False


@pytest.mark.parametrize('text', TRUE)
def test_trust_checkpoint_true_in_any_spelling(text):
    _, _, options, _ = parse_arguments({'checkpoint': 'runs/x', 'trust_checkpoint': text})
    assert options.trust_checkpoint is True


def test_untrusted_unless_said_and_defaults_as_the_cli():
    checkpoint, settings, options, scaling = parse_arguments({'checkpoint': 'runs/x'})
    assert (checkpoint, options, scaling) == ('runs/x', ReplicaOptions(), Scaling())
    assert options.trust_checkpoint is False and settings == Settings()


def test_scaling_is_fixed_or_a_range_never_both():
    with pytest.raises(ValueError, match='not both'):
        parse_arguments({'checkpoint': 'x', 'replicas': '2', 'max_replicas': '4'})
    with pytest.raises(ValueError, match='above max_replicas'):
        parse_arguments({'checkpoint': 'x', 'min_replicas': '5', 'max_replicas': '4'})
    _, settings, options, scaling = parse_arguments({'checkpoint': 'x', 'min_replicas': '0', 'max_replicas': '3'})
    assert deployment_options(settings, options, scaling)['autoscaling_config'] == {
        'min_replicas': 0, 'max_replicas': 3, 'target_ongoing_requests': settings.max_batch_size}
