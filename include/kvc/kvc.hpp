// kvc/kvc.hpp — the umbrella header: includes every public kvc header that needs no optional
// dependency (the verbs transport lives under kvc/verbs/ and is included on its own).
//
// Concurrency: see each component's header. Design: docs/design/core.md.
#pragma once

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/error.hpp"
#include "kvc/evict/lfu.hpp"
#include "kvc/evict/priority_ttl.hpp"
#include "kvc/evict/queue_policy.hpp"
#include "kvc/evict/s3fifo.hpp"
#include "kvc/evict/sieve.hpp"
#include "kvc/evict/tinylfu.hpp"
#include "kvc/hash/block_hash.hpp"
#include "kvc/hash/block_hasher.hpp"
#include "kvc/hash/extra_keys.hpp"
#include "kvc/hash/sequence_hasher.hpp"
#include "kvc/transport/batch.hpp"
#include "kvc/transport/counting.hpp"
#include "kvc/transport/faulty.hpp"
#include "kvc/transport/region.hpp"
#include "kvc/transport/remote_ptr.hpp"
#include "kvc/transport/shm.hpp"
#include "kvc/tree/radix_tree.hpp"
#include "kvc/version.hpp"
