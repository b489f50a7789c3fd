// kvc/evict/any_policy.hpp — one eviction policy chosen at run time, behind one type: a config
// struct or a command-line flag names the policy, while the radix tree and the pools stay
// templated on a single EvictionPolicy (radix_tree<Hash, Payload, any_policy>).
//
// Covered (policy_kind, in this order; to_string / parse_policy_kind spell them):
//   lru, fifo     queue_policy.hpp             (no config)
//   sieve         sieve.hpp                    (no config)
//   s3fifo        s3fifo.hpp                   any_policy_config::s3fifo
//   lfu           lfu.hpp                      any_policy_config::lfu
//   priority_ttl  priority_ttl.hpp, on Clock   any_policy_config::priority_ttl
// plus TinyLFU admission (tinylfu.hpp) in front of any of them: any_policy_config::admission, or
// "tinylfu+<kind>" for parse_policy_config. tinylfu<X> orders entries exactly as X does and its
// hook is X's, so it is a frequency sketch beside X rather than a policy of its own: it is kept
// that way here (access() records the key, then X's access; record() and admit() as tinylfu<X>)
// and combines with every kind instead of doubling the list. Priority+TTL fits the concept as
// well; its extra calls (set_priority, pin_until, pin_for) are forwarded when it is the active
// policy and ignored (returning false) otherwise, so a host may give hints whatever the kind.
// The clock is a template parameter, as for priority_ttl_policy: any_policy is
// basic_any_policy<std::chrono::steady_clock>.
//
// Each policy behaves exactly as its concrete class: the same calls give the same victims in the
// same order (tests/unit/any_policy_test.cpp checks it against each concrete policy).
//
// Hooks. any_policy::hook is aligned raw storage as large as the largest wrapped hook. A hook
// knows nothing of the policy when it is constructed, so it is constructed empty; insert()
// constructs the active policy's hook at offset 0 of the storage (placement new, no allocation)
// and erase() destroys it, so a hook can be inserted into policies of different kinds over its
// life (one at a time). The storage is the hook's first and only member, so the inner hook and
// the outer hook share an address and victim() converts the inner pointer back by address.
// Copying a hook gives an empty hook (like Boost.Intrusive's hooks); hooks stay at a fixed
// address while inserted, as the concept requires. Precondition, as for every policy: access()
// and erase() only on a hook inserted into this policy.
//
// Memory: 32 bytes per hook on 64-bit targets (the size of S3-FIFO's, LFU's and priority+TTL's
// hooks, alignment 8), where LRU or FIFO alone take 16 and SIEVE 24; in a radix_tree over hash64
// that is 48 bytes per block, as with S3-FIFO. The policy object holds the active policy inline
// (a std::variant: 6,288 bytes with libstdc++, LFU's 256 count lists being the largest); only
// the active policy is constructed, so S3-FIFO's ghost table (and the TinyLFU sketch, when
// admission is on) is allocated only when chosen, once, at construction.
//
// Cost: every call dispatches with one switch on the active policy's index (a jump table whose
// cases are the concrete policies' code, inlined), and access() also tests whether admission is
// on. No virtual call, no allocation per event, but about 2 ns per call that a concrete policy
// does not pay. bm_eviction's loops (65,536 entries, on a shared 2-core x86-64 machine, so
// rough): access under LRU 9 -> 15 ns, SIEVE 4.5 -> 6, LFU 21 -> 27, FIFO 0 -> 4; an eviction
// step (access, victim, erase, insert) under LRU 19 -> 28 ns, S3-FIFO 34 -> 44, LFU 38 -> 41.
// Where the policy is known when building, the concrete class avoids both costs.
//
// Concurrency: none; the owner serialises calls. Design: docs/design/eviction.md.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "kvc/concepts.hpp"
#include "kvc/config.hpp"
#include "kvc/error.hpp"
#include "kvc/evict/lfu.hpp"
#include "kvc/evict/priority_ttl.hpp"
#include "kvc/evict/queue_policy.hpp"
#include "kvc/evict/s3fifo.hpp"
#include "kvc/evict/sieve.hpp"
#include "kvc/evict/tinylfu.hpp"

namespace kvc::inline v0 {

// The policies any_policy can wrap. Values are stable (a config may store them).
enum class policy_kind : std::uint8_t { lru, fifo, sieve, s3fifo, lfu, priority_ttl };

// Every kind, in order: what a sweep over policies iterates.
inline constexpr std::array<policy_kind, 6> policy_kinds = {
    policy_kind::lru,    policy_kind::fifo, policy_kind::sieve,
    policy_kind::s3fifo, policy_kind::lfu,  policy_kind::priority_ttl};

// The kind's name: "lru", "fifo", "sieve", "s3fifo", "lfu", "priority_ttl" ("unknown" for a value
// outside the enum).
[[nodiscard]] constexpr std::string_view to_string(policy_kind kind) noexcept {
  switch (kind) {
    case policy_kind::lru:
      return "lru";
    case policy_kind::fifo:
      return "fifo";
    case policy_kind::sieve:
      return "sieve";
    case policy_kind::s3fifo:
      return "s3fifo";
    case policy_kind::lfu:
      return "lfu";
    case policy_kind::priority_ttl:
      return "priority_ttl";
  }
  return "unknown";
}

namespace detail {

// "lru, fifo, sieve, s3fifo, lfu, priority_ttl"
[[nodiscard]] inline std::string policy_kind_names() {
  std::string names;
  for (policy_kind k : policy_kinds) {
    if (!names.empty()) names += ", ";
    names += to_string(k);
  }
  return names;
}

[[nodiscard]] constexpr bool equals_ignoring_case(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace detail

// The kind named `name` (ASCII case ignored). Errors: invalid_config naming the valid names.
[[nodiscard]] inline result<policy_kind> parse_policy_kind(std::string_view name) {
  for (policy_kind k : policy_kinds) {
    if (detail::equals_ignoring_case(name, to_string(k))) return k;
  }
  return fail(errc::invalid_config, "unknown eviction policy \"" + std::string(name) +
                                        "\"; valid names: " + detail::policy_kind_names());
}

// Which policy any_policy runs, and its settings. Only the chosen kind's config is used.
struct any_policy_config {
  policy_kind kind = policy_kind::lru;
  s3fifo_config s3fifo{};
  lfu_config lfu{};
  priority_ttl_config priority_ttl{};
  // TinyLFU admission in front of the policy (as tinylfu<P>): off when empty.
  std::optional<tinylfu_config> admission{};
};

// The config named by `spec`: "<kind>" or "tinylfu+<kind>" (TinyLFU admission with default
// settings), with every other setting at its default. Errors: invalid_config naming the valid
// spellings.
[[nodiscard]] inline result<any_policy_config> parse_policy_config(std::string_view spec) {
  constexpr std::string_view admission_prefix = "tinylfu+";
  any_policy_config config;
  std::string_view name = spec;
  if (name.size() >= admission_prefix.size() &&
      detail::equals_ignoring_case(name.substr(0, admission_prefix.size()), admission_prefix)) {
    config.admission.emplace();
    name.remove_prefix(admission_prefix.size());
  }
  auto kind = parse_policy_kind(name);
  if (!kind) {
    return fail(errc::invalid_config, "unknown eviction policy \"" + std::string(spec) +
                                          "\"; valid: <kind> or tinylfu+<kind>, <kind> one of " +
                                          detail::policy_kind_names());
  }
  config.kind = *kind;
  return config;
}

// Checks the settings the chosen kind uses (and admission's, when on), so that a config read at
// run time is refused with a message instead of failing the policies' assertions. Errors:
// invalid_config saying which setting is wrong.
[[nodiscard]] inline result<void> validate(const any_policy_config& config) {
  if (static_cast<std::size_t>(config.kind) >= policy_kinds.size()) {
    return fail(errc::invalid_config, "eviction policy kind " +
                                          std::to_string(static_cast<unsigned>(config.kind)) +
                                          " is not one of " + detail::policy_kind_names());
  }
  switch (config.kind) {
    case policy_kind::lru:
    case policy_kind::fifo:
    case policy_kind::sieve:
    case policy_kind::lfu:
      break;
    case policy_kind::s3fifo:
      if (!std::has_single_bit(config.s3fifo.ghost_slots)) {
        return fail(errc::invalid_config, "s3fifo ghost_slots " +
                                              std::to_string(config.s3fifo.ghost_slots) +
                                              " is not a power of two");
      }
      if (!(config.s3fifo.small_ratio > 0 && config.s3fifo.small_ratio < 1)) {
        return fail(errc::invalid_config, "s3fifo small_ratio " +
                                              std::to_string(config.s3fifo.small_ratio) +
                                              " is not in (0, 1)");
      }
      break;
    case policy_kind::priority_ttl:
      if (config.priority_ttl.levels < 1 || config.priority_ttl.levels > 256) {
        return fail(errc::invalid_config, "priority_ttl levels " +
                                              std::to_string(config.priority_ttl.levels) +
                                              " is not in [1, 256]");
      }
      if (config.priority_ttl.default_level >= config.priority_ttl.levels) {
        return fail(errc::invalid_config, "priority_ttl default_level " +
                                              std::to_string(config.priority_ttl.default_level) +
                                              " is not below levels " +
                                              std::to_string(config.priority_ttl.levels));
      }
      break;
  }
  if (config.admission &&
      !(std::has_single_bit(config.admission->width) && config.admission->width >= 64)) {
    return fail(errc::invalid_config, "tinylfu width " + std::to_string(config.admission->width) +
                                          " is not a power of two of at least 64");
  }
  return {};
}

template <class Clock = std::chrono::steady_clock>
class basic_any_policy {
 public:
  using clock = Clock;
  using time_point = typename Clock::time_point;

 private:
  // The alternatives, in policy_kind order.
  using variant_type = std::variant<lru_policy, fifo_policy, sieve_policy, s3fifo_policy,
                                    lfu_policy, priority_ttl_policy<Clock>>;
  static_assert(std::variant_size_v<variant_type> == policy_kinds.size());

  template <std::size_t... I>
  static constexpr std::size_t max_hook_size(std::index_sequence<I...>) noexcept {
    return std::max({sizeof(typename std::variant_alternative_t<I, variant_type>::hook)...});
  }
  template <std::size_t... I>
  static constexpr std::size_t max_hook_align(std::index_sequence<I...>) noexcept {
    return std::max({alignof(typename std::variant_alternative_t<I, variant_type>::hook)...});
  }
  using indices = std::make_index_sequence<std::variant_size_v<variant_type>>;

 public:
  // The per-entry state: derive the cached entry from it. Empty until inserted; see the header
  // comment.
  class hook {
   public:
    hook() noexcept {}  // the storage stays uninitialised until insert()
    // A copy, or a hook assigned to, is not inserted anywhere (it keeps its own state).
    hook(const hook& /*other*/) noexcept {}
    hook& operator=(const hook& /*other*/) noexcept { return *this; }
    ~hook() = default;

   private:
    friend basic_any_policy;
    alignas(max_hook_align(indices{})) unsigned char storage_[max_hook_size(indices{})];
  };

  // The policy the config names (which must be valid: validate(); an invalid one fails the
  // policy's assertion).
  explicit basic_any_policy(const any_policy_config& config = {})
      : policies_(make(config)),
        sketch_(config.admission ? std::optional<frequency_sketch>(std::in_place, *config.admission)
                                 : std::nullopt) {}
  // The policy of that kind with its default settings, without admission.
  explicit basic_any_policy(policy_kind kind) : basic_any_policy(config_of(kind)) {}
  basic_any_policy(const basic_any_policy&) = delete;
  basic_any_policy& operator=(const basic_any_policy&) = delete;

  void insert(hook& h, std::uint64_t key) noexcept {
    dispatch([&](auto& p) {
      using inner = typename std::remove_reference_t<decltype(p)>::hook;
      p.insert(*::new (static_cast<void*>(h.storage_)) inner, key);
    });
  }
  void access(hook& h, std::uint64_t key) noexcept {
    if (sketch_) sketch_->record(key);
    dispatch([&](auto& p) { p.access(inner_of(p, h), key); });
  }
  void erase(hook& h) noexcept {
    dispatch([&](auto& p) {
      auto& inner = inner_of(p, h);
      p.erase(inner);
      std::destroy_at(&inner);
    });
  }

  template <class Pred>
  hook* victim(Pred&& evictable) {
    return dispatch([&](auto& p) -> hook* {
      using inner = typename std::remove_reference_t<decltype(p)>::hook;
      inner* v = p.victim([&evictable](inner& h) -> bool { return evictable(outer_of(h)); });
      return v == nullptr ? nullptr : &outer_of(*v);
    });
  }

  [[nodiscard]] std::size_t size() const noexcept {
    return dispatch([](const auto& p) -> std::size_t { return p.size(); });
  }

  // The active policy.
  [[nodiscard]] policy_kind kind() const noexcept {
    return static_cast<policy_kind>(policies_.index());
  }
  // The active policy as its concrete class P, or nullptr when another one is active.
  template <class P>
  [[nodiscard]] P* get_if() noexcept {
    return std::get_if<P>(&policies_);
  }
  template <class P>
  [[nodiscard]] const P* get_if() const noexcept {
    return std::get_if<P>(&policies_);
  }

  // TinyLFU admission, as tinylfu<P>: whether it is on; record() a sighting of a key that is not
  // cached (a miss); admit() whether a new entry should replace the victim. Without admission,
  // record() does nothing and admit() is always true.
  [[nodiscard]] bool has_admission() const noexcept { return sketch_.has_value(); }
  void record(std::uint64_t key) noexcept {
    if (sketch_) sketch_->record(key);
  }
  [[nodiscard]] bool admit(std::uint64_t candidate, std::uint64_t victim_key) const noexcept {
    return !sketch_ || sketch_->estimate(candidate) > sketch_->estimate(victim_key);
  }
  // The sketch, or nullptr without admission.
  [[nodiscard]] const frequency_sketch* sketch() const noexcept {
    return sketch_ ? &*sketch_ : nullptr;
  }

  // Priority+TTL's calls (priority_ttl.hpp): applied when it is the active policy, ignored
  // otherwise; true when applied.
  bool set_priority(hook& h, std::uint8_t level) noexcept {
    auto* p = get_if<priority_ttl_policy<Clock>>();
    if (p != nullptr) p->set_priority(inner_of(*p, h), level);
    return p != nullptr;
  }
  bool pin_until(hook& h, time_point until) noexcept {
    auto* p = get_if<priority_ttl_policy<Clock>>();
    if (p != nullptr) p->pin_until(inner_of(*p, h), until);
    return p != nullptr;
  }
  bool pin_for(hook& h, typename Clock::duration ttl) noexcept {
    auto* p = get_if<priority_ttl_policy<Clock>>();
    if (p != nullptr) p->pin_for(inner_of(*p, h), ttl);
    return p != nullptr;
  }

 private:
  static_assert(std::is_standard_layout_v<hook>, "the storage must sit at the hook's address");

  static any_policy_config config_of(policy_kind kind) noexcept {
    any_policy_config config;
    config.kind = kind;
    return config;
  }

  // The variant holding the chosen policy (returned as a prvalue: the policies do not move).
  static variant_type make(const any_policy_config& config) {
    switch (config.kind) {
      case policy_kind::lru:
        return variant_type(std::in_place_index<0>);
      case policy_kind::fifo:
        return variant_type(std::in_place_index<1>);
      case policy_kind::sieve:
        return variant_type(std::in_place_index<2>);
      case policy_kind::s3fifo:
        return variant_type(std::in_place_index<3>, config.s3fifo);
      case policy_kind::lfu:
        return variant_type(std::in_place_index<4>, config.lfu);
      case policy_kind::priority_ttl:
        return variant_type(std::in_place_index<5>, config.priority_ttl);
    }
    KVC_ASSERT(false, "any_policy: unknown policy_kind");
    return variant_type(std::in_place_index<0>);
  }

  // Calls f with the active policy. One switch; the last case is the default, so every path
  // returns.
  template <class Self, class F>
  static decltype(auto) dispatch_on(Self& self, F&& f) {
    static_assert(std::variant_size_v<variant_type> == 6, "one case per policy");
    auto& v = self.policies_;
    switch (v.index()) {
      case 0:
        return f(*std::get_if<0>(&v));
      case 1:
        return f(*std::get_if<1>(&v));
      case 2:
        return f(*std::get_if<2>(&v));
      case 3:
        return f(*std::get_if<3>(&v));
      case 4:
        return f(*std::get_if<4>(&v));
      default:
        return f(*std::get_if<5>(&v));
    }
  }
  template <class F>
  decltype(auto) dispatch(F&& f) {
    return dispatch_on(*this, std::forward<F>(f));
  }
  template <class F>
  decltype(auto) dispatch(F&& f) const {
    return dispatch_on(*this, std::forward<F>(f));
  }

  // The inner hook that insert() constructed in h's storage for policy P.
  template <class P>
  static typename P::hook& inner_of(const P& /*policy*/, hook& h) noexcept {
    return *std::launder(reinterpret_cast<typename P::hook*>(h.storage_));
  }
  // The hook whose storage holds `inner` (at offset 0: the same address).
  template <class InnerHook>
  static hook& outer_of(InnerHook& inner) noexcept {
    return *reinterpret_cast<hook*>(reinterpret_cast<unsigned char*>(&inner));
  }

  variant_type policies_;
  std::optional<frequency_sketch> sketch_;
};

using any_policy = basic_any_policy<>;

static_assert(EvictionPolicy<any_policy>);

}  // namespace kvc::inline v0
