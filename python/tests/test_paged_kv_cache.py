"""PagedKvCache: steps and their plans, writes and gathers, forks, prefixes, evictions, hybrid layers, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import micache

PAGE = 4
KV_HEADS = 2
HEAD_DIM = 4


def paged_config(num_pages: int = 8, **fields: object) -> micache.PagedKvConfig:
    """Two F32 layers of 2 kv heads x 4, pages of 4 tokens."""
    return micache.PagedKvConfig(
        n_layers=2, kv_heads=KV_HEADS, head_dim=HEAD_DIM, page_size=PAGE, num_pages=num_pages,
        dtype=micache.DType.F32, **fields,
    )


def new_tokens(rng: np.random.Generator, count: int) -> np.ndarray:
    """Keys or values of `count` new tokens, [count, kv_heads, head_dim]."""
    return rng.random((count, KV_HEADS, HEAD_DIM), dtype=np.float32)


def dense(tensor: micache.Tensor) -> np.ndarray:
    """A gathered [1, kv_heads, len, head_dim] tensor as [len, kv_heads, head_dim], the order written."""
    return np.from_dlpack(tensor)[0].transpose(1, 0, 2)


def pointer(tensor: micache.Tensor) -> int:
    return np.from_dlpack(tensor).__array_interface__["data"][0]


@pytest.fixture
def cache() -> micache.PagedKvCache:
    return micache.PagedKvCache(paged_config())


def test_config_counts_bytes_and_pages() -> None:
    config = paged_config()
    assert config.bytes_per_token() == 2 * 2 * KV_HEADS * HEAD_DIM * 4
    assert config.slot_bytes() == config.bytes_per_token()
    assert config.page_bytes() == PAGE * config.bytes_per_token()
    assert (config.pages(), config.pool_pages()) == (8, 8)
    assert config.reserved_bytes() == 8 * config.page_bytes()
    assert (config.sequence_len(), config.row_capacity()) == (32, 8)
    config.validate()


def test_config_validation_names_the_field() -> None:
    with pytest.raises(micache.ConfigError) as info:
        micache.PagedKvConfig(kv_heads=2, head_dim=4, num_pages=8).validate()
    assert str(info.value) == "PagedKvConfig.n_layers must be >= 1, got 0"


def test_config_keeps_layer_kinds_and_derives_the_null_page() -> None:
    config = paged_config(num_pages=9, layer_kinds=[micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()])
    assert config.layer_kinds == [micache.PagedLayerKind(window=4), micache.PagedLayerKind()]
    assert config.layer_kinds[1].is_full
    assert config.pool_pages() == 8
    assert repr(micache.PagedLayerKind.sinks_and_window(2, 8)) == "micache.PagedLayerKind.sinks_and_window(2, 8)"


def test_layer_groups_follow_the_kinds() -> None:
    window, full = micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()
    config = paged_config(num_pages=9, layer_kinds=[window, full])
    groups = config.layer_groups()
    assert (groups.group_size, groups.groups, groups.has_windows) == (1, 2, True)
    assert (groups.layer_group, groups.layer_slot, groups.group_kinds) == ([0, 1], [0, 0], [window, full])
    assert repr(micache.PagedKvCache(config).layer_groups) == (
        "micache.PagedLayerGroups(group_size=1, layer_group=[0, 1], layer_slot=[0, 0], "
        "group_kinds=[micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()])"
    )
    assert config.storage_page_bytes() == config.page_bytes()


def test_kind_of_a_layer_is_its_kind() -> None:
    config = paged_config(num_pages=9, layer_kinds=[micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()])
    assert config.kind_of(0) == micache.PagedLayerKind.sliding(4)
    assert paged_config().kind_of(1).is_full


def test_kind_of_a_layer_out_of_range_is_a_hook_error() -> None:
    with pytest.raises(micache.HookError) as info:
        paged_config().kind_of(2)
    assert str(info.value) == "layer 2 out of range (layers=2)"


def test_sequence_ids_are_plain_ints(cache) -> None:
    first, second = cache.add_sequence(), cache.add_sequence()
    assert (type(first), first, second) == (int, 0, 1)
    assert (len(cache), cache.num_sequences) == (2, 2)


def test_written_tokens_gather_back(cache, rng) -> None:
    seq = cache.add_sequence()
    plan = cache.begin_step([seq], [6])
    keys, values = new_tokens(rng, 6), new_tokens(rng, 6)
    cache.write(1, plan, keys, values)
    gathered = cache.gather(seq, 1)
    np.testing.assert_array_equal(dense(gathered.keys), keys)
    np.testing.assert_array_equal(dense(gathered.values), values)
    assert cache.length(seq) == 6
    assert cache.positions(seq) == list(range(6))


def test_plan_arrays_are_flashinfer_and_vllm_metadata(cache) -> None:
    a, b = cache.add_sequence(), cache.add_sequence()
    plan = cache.begin_step([a, b], [5, 3])
    assert (plan.batch, plan.total_new, plan.total_pages, plan.groups) == (2, 8, 3, 1)
    assert repr(plan) == "micache.PagedStepPlan(batch=2, total_new=8, total_pages=3, groups=1)"
    pages_a, pages_b = cache.pages_of(a), cache.pages_of(b)
    assert np.from_dlpack(plan.kv_indptr).tolist() == [0, 2, 3]
    assert np.from_dlpack(plan.kv_indices).tolist() == pages_a + pages_b
    assert np.from_dlpack(plan.kv_last_page_len).tolist() == [1, 3]
    assert np.from_dlpack(plan.qo_indptr).tolist() == [0, 5, 8]
    slots = [pages_a[t // PAGE] * PAGE + t % PAGE for t in range(5)] + [pages_b[0] * PAGE + t for t in range(3)]
    assert np.from_dlpack(plan.slot_mapping).tolist() == slots
    assert np.from_dlpack(cache.slot_mapping(plan, 1)).tolist() == slots
    assert np.from_dlpack(cache.kv_indices(plan, 1)).tolist() == pages_a + pages_b


def test_block_table_row_holds_the_sequence_pages(cache) -> None:
    seq = cache.add_sequence()
    cache.begin_step([seq], [7])
    table = np.from_dlpack(cache.block_table())
    assert table.shape == (1024, 8)
    assert table[cache.row_of(seq), :2].tolist() == cache.pages_of(seq)


def test_fork_shares_pages_until_a_write_copies_the_last(cache) -> None:
    parent = cache.add_sequence()
    cache.begin_step([parent], [6])
    child = cache.fork(parent)
    stats = cache.pool_stats()
    assert (stats.pages_used, stats.pages_shared) == (2, 2)
    assert cache.pages_of(child) == cache.pages_of(parent)
    cache.begin_step([child], [1])
    assert cache.pool_stats().pages_used == 3
    assert cache.pages_of(child)[0] == cache.pages_of(parent)[0]
    assert cache.pages_of(child)[1] != cache.pages_of(parent)[1]
    assert (cache.length(parent), cache.length(child)) == (6, 7)


def test_forked_sequence_gathers_the_parent_tokens(cache, rng) -> None:
    parent = cache.add_sequence()
    plan = cache.begin_step([parent], [6])
    keys, values = new_tokens(rng, 6), new_tokens(rng, 6)
    cache.write(0, plan, keys, values)
    child = cache.fork(parent)
    plan = cache.begin_step([child], [1])
    cache.write(0, plan, new_tokens(rng, 1), new_tokens(rng, 1))
    np.testing.assert_array_equal(dense(cache.gather(child, 0).keys)[:6], keys)
    np.testing.assert_array_equal(dense(cache.gather(parent, 0).keys), keys)


def test_a_released_prompt_is_a_prefix_hit_for_the_same_prompt(cache) -> None:
    prompt = list(range(100, 109))
    first = cache.add_sequence(prompt)
    assert (first.cached_tokens, repr(first)) == (0, "micache.PrefixHit(id=0, cached_tokens=0)")
    cache.begin_step([first.id], [len(prompt)], prompt)
    cache.release(first.id)
    assert cache.pool_stats().pages_cached == 2
    hit = cache.add_sequence(prompt)
    assert (hit.id, hit.cached_tokens) == (1, 8)
    assert cache.length(hit.id) == 8
    stats = cache.prefix_stats()
    assert (stats.lookup_tokens, stats.hit_tokens, stats.hit_pages) == (18, 8, 2)


def test_a_prompt_of_another_salt_shares_nothing(cache) -> None:
    prompt = list(range(9))
    first = cache.add_sequence(prompt)
    cache.begin_step([first.id], [len(prompt)], prompt)
    assert cache.add_sequence(prompt, salt=5).cached_tokens == 0


def test_trim_to_keeps_the_last_tokens(cache, rng) -> None:
    seq = cache.add_sequence()
    plan = cache.begin_step([seq], [10])
    keys, values = new_tokens(rng, 10), new_tokens(rng, 10)
    cache.write(0, plan, keys, values)
    assert cache.trim_to(seq, 4)
    assert not cache.trim_to(seq, 4)
    assert cache.positions(seq) == [6, 7, 8, 9]
    np.testing.assert_array_equal(dense(cache.gather(seq, 0).values), values[6:])
    assert cache.pool_stats().pages_used == 1


def test_evict_to_window_keeps_sinks_and_the_window(cache) -> None:
    seq = cache.add_sequence()
    cache.begin_step([seq], [10])
    assert cache.evict_to_window(seq, 2, 3)
    assert cache.positions(seq) == [0, 1, 7, 8, 9]


def test_evict_heavy_hitters_keeps_the_highest_scores_and_the_window(cache) -> None:
    seq = cache.add_sequence()
    cache.begin_step([seq], [8])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    assert cache.evict_heavy_hitters(seq, scores, heavy=2, window=2)
    assert cache.positions(seq) == [1, 3, 6, 7]


def test_a_window_layer_gives_back_pages_past_its_window() -> None:
    config = paged_config(num_pages=9, layer_kinds=[micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()])
    cache = micache.PagedKvCache(config)
    seq = cache.add_sequence()
    plan = cache.begin_step([seq], [8])
    assert plan.groups == 2
    cache.begin_step([seq], [1])
    assert config.pool_pages() in cache.pages_of(seq, 0)
    assert config.pool_pages() not in cache.pages_of(seq, 1)
    assert cache.sequence_stats(seq).pages == 2 + 3


def test_decode_attention_of_one_token_is_its_value(cache, rng) -> None:
    a, b = cache.add_sequence(), cache.add_sequence()
    plan = cache.begin_step([a, b], [1, 1])
    keys, values = new_tokens(rng, 2), new_tokens(rng, 2)
    cache.write(0, plan, keys, values)
    queries = rng.random((2, 4, HEAD_DIM), dtype=np.float32)
    out = cache.decode_attention(0, plan, queries)
    assert (out.shape, out.dtype) == ((2, 4, HEAD_DIM), micache.DType.F32)
    # Query head q reads kv head q // 2.
    np.testing.assert_allclose(np.from_dlpack(out), values[:, [0, 0, 1, 1], :], rtol=1e-6)


def test_device_accounting_matches_the_host_counters(cache) -> None:
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.begin_step([a, b], [5, 3])
    accounting = cache.device_accounting([a, b])
    stats, seq = cache.pool_stats(), cache.sequence_stats(a)
    pool = [stats.pages_used, stats.pages_shared, stats.tokens, stats.bytes_used]
    assert np.from_dlpack(accounting.pool).tolist() == pool
    assert np.from_dlpack(accounting.per_sequence)[0].tolist() == [seq.tokens, seq.pages, seq.bytes, seq.slack]
    assert repr(seq) == "micache.PagedSequenceStats(tokens=5, pages=2, bytes=1024, slack=3)"


def test_stats_and_memory_count_the_pages(cache) -> None:
    seq = cache.add_sequence()
    cache.begin_step([seq], [5])
    assert repr(cache.pool_stats()) == (
        "micache.PagedPoolStats(pages_total=8, pages_used=2, pages_cached=0, pages_free=6, pages_shared=0, "
        "tokens=5, bytes_total=4096, bytes_used=1024, bytes_cached=0, bytes_free=3072)"
    )
    assert cache.memory_usage == 5 * cache.config.slot_bytes()
    assert cache.memory_reserved == cache.config.reserved_bytes() + cache.config.table_bytes()
    assert repr(cache) == (
        "micache.PagedKvCache(n_layers=2, num_pages=8, page_size=4, num_sequences=1, pages_used=2, device=cpu)"
    )


def test_save_and_load_round_trip_the_state(cache, rng, tmp_path: Path) -> None:
    prompt = list(range(9))
    a = cache.add_sequence(prompt).id
    plan = cache.begin_step([a], [9], prompt)
    keys, values = new_tokens(rng, 9), new_tokens(rng, 9)
    cache.write(0, plan, keys, values)
    b = cache.fork(a)
    cache.trim_to(b, 5)
    path = tmp_path / "paged.safetensors"
    cache.save(path)
    loaded = micache.PagedKvCache.load(path)
    assert len(loaded) == 2
    for seq in (a, b):
        assert (loaded.length(seq), loaded.pages_of(seq), loaded.positions(seq)) == (
            cache.length(seq), cache.pages_of(seq), cache.positions(seq))
        np.testing.assert_array_equal(dense(loaded.gather(seq, 0).keys), dense(cache.gather(seq, 0).keys))
    assert repr(loaded.pool_stats()) == repr(cache.pool_stats())
    assert repr(loaded.prefix_stats()) == repr(cache.prefix_stats())
    assert loaded.add_sequence() == cache.add_sequence()


def stored_pages(cache: micache.PagedKvCache, state: micache.PagedKvState) -> list[np.ndarray]:
    """What restore takes: each storage tensor's rows of state.stored_pages() (the layers of group 0 name them)."""
    groups = cache.layer_groups
    layers = [layer for layer in range(cache.config.n_layers) if groups.layer_group[layer] == 0]
    return [np.from_dlpack(cache.pages(layer))[state.stored_pages()] for layer in layers]


def test_state_holds_the_bookkeeping(cache) -> None:
    a = cache.add_sequence()
    cache.begin_step([a], [6])
    state = cache.state()
    assert [s.id for s in state.sequences] == [a]
    sequence = state.sequences[0]
    assert (sequence.length, sequence.pages, sequence.next_position) == (6, cache.pages_of(a), 6)
    assert sequence.positions == [micache.PositionRun(begin=0, length=6)]
    assert (len(state.references), state.step, state.next_id) == (8, 1, 1)
    assert sorted(state.stored_pages()) == sorted(cache.pages_of(a))
    assert repr(sequence) == f"micache.PagedSequenceState(id=0, length=6, pages={cache.pages_of(a)}, row=0)"


def test_restore_continues_exactly_from_a_state(cache, rng) -> None:
    prompt = list(range(9))
    a = cache.add_sequence(prompt).id
    plan = cache.begin_step([a], [9], prompt)
    for layer in range(2):
        cache.write(layer, plan, new_tokens(rng, 9), new_tokens(rng, 9))
    b = cache.fork(a)
    state = cache.state()
    restored = micache.PagedKvCache.restore(cache.config, state, stored_pages(cache, state))
    assert restored.state() == state
    for seq in (a, b):
        np.testing.assert_array_equal(dense(restored.gather(seq, 1).values), dense(cache.gather(seq, 1).values))
    assert restored.begin_step([b], [1]).total_pages == cache.begin_step([b], [1]).total_pages
    assert restored.pages_of(b) == cache.pages_of(b)


def test_restore_of_a_hybrid_cache_takes_one_tensor_per_storage_tensor(rng) -> None:
    config = paged_config(num_pages=9, layer_kinds=[micache.PagedLayerKind.sliding(4), micache.PagedLayerKind.full()])
    cache = micache.PagedKvCache(config)
    seq = cache.add_sequence()
    for count in (6, 1, 1, 1):
        plan = cache.begin_step([seq], [count])
        for layer in range(2):
            cache.write(layer, plan, new_tokens(rng, count), new_tokens(rng, count))
    state = cache.state()
    restored = micache.PagedKvCache.restore(config, state, stored_pages(cache, state))
    assert restored.pages_of(seq, 0) == cache.pages_of(seq, 0)
    np.testing.assert_array_equal(dense(restored.gather(seq, 1).keys), dense(cache.gather(seq, 1).keys))


def test_restore_names_what_is_wrong_with_a_state(cache) -> None:
    seq = cache.add_sequence()
    cache.begin_step([seq], [6])
    state = cache.state()
    sequence = state.sequences[0]
    sequence.length = 9
    state.sequences = [sequence]
    with pytest.raises(micache.ConfigError) as info:
        micache.PagedKvCache.restore(cache.config, state, stored_pages(cache, cache.state()))
    assert str(info.value) == "restore: sequence 0 of 9 tokens holds 2 pages, must hold 3"


def test_restore_needs_one_tensor_per_storage_tensor(cache) -> None:
    cache.begin_step([cache.add_sequence()], [6])
    state = cache.state()
    with pytest.raises(micache.ShapeError) as info:
        micache.PagedKvCache.restore(cache.config, state, stored_pages(cache, state)[:1])
    assert str(info.value) == "restore: 1 stored page tensors for 2 storage tensors"
    assert repr(state) == (
        "micache.PagedKvState(sequences=1, pages=8, free_pages=6, cached_pages=0, names=0, next_id=1, step=1)"
    )


def test_an_unknown_id_is_a_hook_error(cache) -> None:
    with pytest.raises(micache.HookError) as info:
        cache.begin_step([7], [1])
    assert str(info.value) == "begin_step: unknown sequence 7 (never added, or released)"


def test_a_released_id_is_unknown(cache) -> None:
    seq = cache.add_sequence()
    cache.release(seq)
    with pytest.raises(micache.HookError) as info:
        cache.length(seq)
    assert str(info.value) == "length: unknown sequence 0 (never added, or released)"


def test_a_step_past_the_pool_is_out_of_memory_and_changes_nothing() -> None:
    cache = micache.PagedKvCache(paged_config(num_pages=3))
    first, second = cache.add_sequence(), cache.add_sequence()
    cache.begin_step([first], [8])
    with pytest.raises(micache.OutOfMemoryError) as info:
        cache.begin_step([first, second], [1, 5])
    assert str(info.value) == "begin_step: needs 3 pages (0 copied on write), 1 free and 0 cached of 3"
    assert (cache.length(first), cache.length(second), cache.pool_stats().pages_free) == (8, 0, 1)


def test_a_write_of_the_wrong_token_count_is_a_shape_error(cache, rng) -> None:
    seq = cache.add_sequence()
    plan = cache.begin_step([seq], [3])
    with pytest.raises(micache.ShapeError) as info:
        cache.write(0, plan, new_tokens(rng, 2), new_tokens(rng, 2))
    assert str(info.value) == "write: keys [2, 2, 4] must be [3, 2, 4] ([total_new, kv_heads, head_dim])"


def test_pages_share_the_cache_storage(cache, rng) -> None:
    seq = cache.add_sequence()
    plan = cache.begin_step([seq], [1])
    keys, values = new_tokens(rng, 1), new_tokens(rng, 1)
    cache.write(1, plan, keys, values)
    pages = np.from_dlpack(cache.pages(1))
    assert pages.shape == (8, 2, PAGE, KV_HEADS, HEAD_DIM)
    assert pointer(cache.pages(1)) == pages.__array_interface__["data"][0]
    page = cache.pages_of(seq, 1)[0]
    np.testing.assert_array_equal(pages[page, 0, 0], keys[0])
    np.testing.assert_array_equal(pages[page, 1, 0], values[0])


def test_docstrings_come_from_the_header() -> None:
    assert "copies on write" in micache.PagedKvCache.begin_step.__doc__
    assert "FlashInfer" in micache.PagedStepPlan.__doc__
