// micache: device-resident caches for GPU inference servers and interpretability tools.
// Include this header for the whole public API.
#pragma once

#include "micache/activation_cache.hpp"
#include "micache/attention_cache.hpp"
#include "micache/backend/backend.hpp"
#include "micache/compressed_heads.hpp"
#include "micache/config.hpp"
#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/error.hpp"
#include "micache/full_activation_cache.hpp"
#include "micache/gqa_kv_cache.hpp"
#include "micache/head_selection.hpp"
#include "micache/kv_cache.hpp"
#include "micache/kv_cache_compressor.hpp"
#include "micache/kv_cache_config.hpp"
#include "micache/multi_head_kv_cache.hpp"
#include "micache/owned_stream.hpp"
#include "micache/registry.hpp"
#include "micache/safetensors.hpp"
#include "micache/shape.hpp"
#include "micache/tensor.hpp"
