// kvc trace generator: synthetic KV-cache traces in the Mooncake format (one JSON object per
// line: timestamp in ms, input_length and output_length in tokens, hash_ids: one id per block of
// the input, equal ids meaning an equal block after an equal prefix, ids numbered in first-seen
// order). What kvc-tracegen writes and what the demo and CI replay; the public trace is never
// part of the project.
//
// The workload: "sessions" arrive as a Poisson process of `rate` per second. A session is one of
//   chat   a conversation: a shared system prompt (one of `system_prompts`, Zipf popularity),
//          then turns; each turn's prompt is the whole history (every earlier user message and
//          answer) plus a new user message, after a think time (exponential, mean think_s);
//   rag    one request: a system prompt, `rag_documents` documents from a corpus of `documents`
//          (Zipf popularity: a few are reused often), a unique question;
//   agent  a loop: a tool-definition prefix (one of `tool_sets`), a task, then steps; each step's
//          prompt extends the previous one by the last action and its observation.
// in proportions chat_share : rag_share : agent_share. Token lengths are uniform in [mean/2,
// 3 mean/2]. Generation stops after `requests` requests or `duration_s` seconds of arrivals,
// whichever comes first (0: no limit; at least one must be set).
//
// Determinism: the same config (seed included) gives the same requests, byte for byte in
// write_jsonl, on every platform (std::mt19937_64 is fully specified; every distribution here is
// computed by hand from its 64-bit outputs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <kvc/error.hpp>
#include <map>
#include <new>
#include <queue>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace kvc_trace {

struct generator_config {
  std::uint64_t seed = 1;
  std::size_t requests = 1000;  // 0: no limit (duration_s must be set)
  double duration_s = 0;        // arrivals stop after this many seconds; 0: no limit
  double rate = 2.0;            // new sessions per second
  std::uint32_t block_tokens = 512;
  double chat_share = 0.6, rag_share = 0.3, agent_share = 0.1;
  // Shared system prompts (chat and rag).
  std::size_t system_prompts = 8;
  double system_zipf = 1.0;
  std::uint32_t system_tokens = 1500;
  // Chat.
  double turns = 4;  // mean turns per conversation (geometric, at least 1)
  std::uint32_t user_tokens = 300, answer_tokens = 400;
  double think_s = 20;  // mean time between a turn and the next
  // RAG.
  std::size_t documents = 200;
  double document_zipf = 1.1;
  std::uint32_t document_tokens = 3000;
  std::uint32_t rag_documents = 2;  // per request
  std::uint32_t question_tokens = 100;
  // Agents.
  std::size_t tool_sets = 4;
  std::uint32_t tool_tokens = 4000, task_tokens = 300;
  double steps = 6;  // mean steps per run (geometric, at least 1)
  std::uint32_t step_tokens = 250;
  double step_s = 3;  // mean time between steps
};

struct trace_request {
  std::uint64_t timestamp_ms = 0;
  std::uint64_t input_length = 0;
  std::uint64_t output_length = 0;
  std::vector<std::uint64_t> hash_ids;
};

// The first invalid field of `c`, as errc::invalid_config naming it.
[[nodiscard]] inline kvc::result<void> check(const generator_config& c) {
  auto bad = [](const std::string& what) {
    return kvc::fail(kvc::errc::invalid_config, "trace generator: " + what);
  };
  if (c.requests == 0 && !(c.duration_s > 0)) {
    return bad("requests or duration_s must bound the trace");
  }
  if (!(c.duration_s >= 0) || !std::isfinite(c.duration_s)) {
    return bad("duration_s must be >= 0");
  }
  if (!(c.rate > 0) || !std::isfinite(c.rate)) return bad("rate must be > 0");
  if (c.block_tokens == 0) return bad("block_tokens must be > 0");
  const double shares[] = {c.chat_share, c.rag_share, c.agent_share};
  for (double s : shares) {
    if (!(s >= 0) || !std::isfinite(s)) return bad("shares must be >= 0");
  }
  if (!(c.chat_share + c.rag_share + c.agent_share > 0)) return bad("some share must be > 0");
  if ((c.chat_share > 0 || c.rag_share > 0) && c.system_prompts == 0) {
    return bad("system_prompts must be > 0");
  }
  if (c.rag_share > 0 && (c.documents == 0 || c.rag_documents == 0)) {
    return bad("documents and rag_documents must be > 0 with rag requests");
  }
  if (c.agent_share > 0 && c.tool_sets == 0) return bad("tool_sets must be > 0");
  for (double z : {c.system_zipf, c.document_zipf}) {
    if (!(z >= 0) || !std::isfinite(z)) return bad("Zipf exponents must be >= 0");
  }
  for (double m : {c.turns, c.steps}) {
    if (!(m >= 1) || !std::isfinite(m)) return bad("turns and steps must be >= 1");
  }
  for (double t : {c.think_s, c.step_s}) {
    if (!(t >= 0) || !std::isfinite(t)) return bad("think_s and step_s must be >= 0");
  }
  // Bounds that keep every timestamp (ms) and token count far from overflowing, and the
  // popularity tables (a double per prompt or document) to a sane size.
  if (c.rate < 1e-6 || c.rate > 1e6) return bad("rate must be between 1e-6 and 1e6 per second");
  if (c.duration_s > 1e9) return bad("duration_s must be at most 1e9 seconds");
  for (double t : {c.think_s, c.step_s}) {
    if (t > 1e6) return bad("think_s and step_s must be at most 1e6 seconds");
  }
  for (double m : {c.turns, c.steps}) {
    if (m > 1e6) return bad("turns and steps must be at most 1e6");
  }
  for (std::size_t n : {c.system_prompts, c.documents, c.tool_sets}) {
    if (n > 10'000'000) return bad("system_prompts, documents and tool_sets must be at most 1e7");
  }
  for (std::uint32_t t :
       {c.block_tokens, c.system_tokens, c.user_tokens, c.answer_tokens, c.document_tokens,
        c.question_tokens, c.tool_tokens, c.task_tokens, c.step_tokens}) {
    if (t > 1'000'000) return bad("token counts must be at most 1e6");
  }
  if (c.rag_documents > 1000) return bad("rag_documents must be at most 1000");
  return {};
}

class generator {
 public:
  // Fails with invalid_config (check()).
  [[nodiscard]] static kvc::result<generator> create(const generator_config& c) {
    if (auto ok = check(c); !ok) return std::move(ok).take_failure();
    return generator(c);
  }

  // Calls emit(const trace_request&) for every request in time order; returns how many.
  template <class Emit>
  std::size_t run(Emit&& emit) {
    std::size_t emitted = 0;
    double next_arrival = exponential(1.0 / cfg_.rate);
    for (;;) {
      if (cfg_.requests > 0 && emitted == cfg_.requests) break;
      const bool arrival_first = pending_.empty() || next_arrival <= pending_.top().at;
      if (arrival_first) {
        if (cfg_.duration_s > 0 && next_arrival > cfg_.duration_s) {
          if (pending_.empty()) break;
          next_arrival = INFINITY;  // no new sessions; the running ones go on
          continue;
        }
        start_session(next_arrival);
        next_arrival += exponential(1.0 / cfg_.rate);
        continue;
      }
      const event e = pending_.top();
      pending_.pop();
      emit(next_request(e));
      ++emitted;
    }
    return emitted;
  }

 private:
  enum class kind : std::uint8_t { chat, rag, agent };
  // A run of tokens of one piece of content (a system prompt, a document, a message...).
  struct piece {
    std::uint64_t key = 0;
    std::uint32_t tokens = 0;
  };
  struct session {
    kind what = kind::chat;
    std::vector<piece> history;  // the prompt so far
    std::uint32_t left = 1;      // requests still to come
    std::uint32_t turn = 0;
  };
  struct event {
    double at = 0;
    std::uint64_t seq = 0;  // ties in time keep their scheduling order
    std::size_t session = 0;
    bool operator>(const event& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  explicit generator(const generator_config& c)
      : cfg_(c),
        rng_(c.seed),
        system_cdf_(zipf_cdf(c.system_prompts, c.system_zipf)),
        document_cdf_(zipf_cdf(c.documents, c.document_zipf)) {}

  // ---- random numbers, computed by hand so that every platform draws the same ---------------

  double uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double exponential(double mean) { return -mean * std::log1p(-uniform()); }
  std::uint32_t around(std::uint32_t mean) {  // uniform in [mean/2, 3 mean/2], at least 1
    const double v = mean * (0.5 + uniform());
    return std::max<std::uint32_t>(1, static_cast<std::uint32_t>(v));
  }
  std::uint32_t geometric(double mean) {  // 1, 2, ... with this mean
    const double p = 1.0 / mean;
    if (p >= 1) return 1;
    const double n = std::floor(std::log1p(-uniform()) / std::log1p(-p));
    return 1 + static_cast<std::uint32_t>(std::min(n, 1e6));
  }
  static std::vector<double> zipf_cdf(std::size_t n, double s) {
    std::vector<double> cdf(n);
    double sum = 0;
    for (std::size_t i = 0; i < n; ++i) {
      sum += 1.0 / std::pow(static_cast<double>(i + 1), s);
      cdf[i] = sum;
    }
    for (double& v : cdf) v /= sum;
    return cdf;
  }
  std::size_t pick(const std::vector<double>& cdf) {
    const double u = uniform();
    const auto it = std::upper_bound(cdf.begin(), cdf.end(), u);
    return std::min<std::size_t>(static_cast<std::size_t>(it - cdf.begin()), cdf.size() - 1);
  }

  // ---- content keys: one per piece of text, never equal for different texts -----------------

  static std::uint64_t key(std::uint64_t what, std::uint64_t a, std::uint64_t b = 0) {
    return mix(mix(what * 0x9E3779B97F4A7C15u ^ a) ^ b);
  }
  static std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9u;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBu;
    return x ^ (x >> 31);
  }

  void start_session(double at) {
    const double total = cfg_.chat_share + cfg_.rag_share + cfg_.agent_share;
    const double u = uniform() * total;
    session s;
    const std::size_t id = sessions_.size();
    s.what = u < cfg_.chat_share                    ? kind::chat
             : u < cfg_.chat_share + cfg_.rag_share ? kind::rag
                                                    : kind::agent;
    switch (s.what) {
      case kind::chat:
        s.history.push_back({key(1, pick(system_cdf_)), cfg_.system_tokens});
        s.left = geometric(cfg_.turns);
        break;
      case kind::rag:
        s.history.push_back({key(1, pick(system_cdf_)), cfg_.system_tokens});
        for (std::uint32_t d = 0; d < cfg_.rag_documents; ++d) {
          s.history.push_back({key(2, pick(document_cdf_)), cfg_.document_tokens});
        }
        s.left = 1;
        break;
      case kind::agent:
        s.history.push_back(
            {key(6, static_cast<std::uint64_t>(uniform() * static_cast<double>(cfg_.tool_sets))),
             cfg_.tool_tokens});
        s.history.push_back({key(7, id), around(cfg_.task_tokens)});
        s.left = geometric(cfg_.steps);
        break;
    }
    sessions_.push_back(std::move(s));
    pending_.push({at, seq_++, id});
  }

  trace_request next_request(const event& e) {
    session& s = sessions_[e.session];
    std::uint32_t output = 0;
    switch (s.what) {
      case kind::chat:
        s.history.push_back({key(3, e.session, s.turn), around(cfg_.user_tokens)});
        output = around(cfg_.answer_tokens);
        break;
      case kind::rag:
        s.history.push_back({key(5, e.session), around(cfg_.question_tokens)});
        output = around(cfg_.answer_tokens);
        break;
      case kind::agent:
        output = around(cfg_.step_tokens);
        break;
    }
    trace_request r;
    r.timestamp_ms = static_cast<std::uint64_t>(std::llround(e.at * 1000.0));
    r.output_length = output;
    r.hash_ids = block_ids(s.history, r.input_length);
    // The answer (chat) or the action and its observation (agent) join the history.
    if (--s.left > 0) {
      const bool chat = s.what == kind::chat;
      s.history.push_back({key(chat ? 4 : 8, e.session, s.turn), output});
      if (!chat) s.history.push_back({key(9, e.session, s.turn), around(cfg_.step_tokens)});
      ++s.turn;
      pending_.push({e.at + exponential(chat ? cfg_.think_s : cfg_.step_s), seq_++, e.session});
    } else {
      s.history = {};  // done: its memory goes
    }
    return r;
  }

  // The ids of the prompt's blocks: a block is its pieces (keys, offsets, lengths) after its
  // parent block, numbered in first-seen order.
  std::vector<std::uint64_t> block_ids(const std::vector<piece>& prompt, std::uint64_t& tokens) {
    std::vector<std::uint64_t> ids;
    tokens = 0;
    for (const piece& p : prompt) tokens += p.tokens;
    std::uint64_t parent = ~std::uint64_t{0}, content = 0;
    std::uint32_t in_block = 0;
    for (const piece& p : prompt) {
      for (std::uint32_t at = 0; at < p.tokens;) {
        const std::uint32_t take = std::min(p.tokens - at, cfg_.block_tokens - in_block);
        content = mix(content ^ key(p.key, at, take));
        in_block += take;
        at += take;
        if (in_block == cfg_.block_tokens) {
          parent = intern(parent, content);
          ids.push_back(parent);
          content = 0;
          in_block = 0;
        }
      }
    }
    if (in_block > 0) ids.push_back(intern(parent, content));  // the partial last block
    return ids;
  }
  std::uint64_t intern(std::uint64_t parent, std::uint64_t content) {
    const auto [it, added] = ids_.try_emplace({parent, content}, next_id_);
    if (added) ++next_id_;
    return it->second;
  }

  generator_config cfg_;
  std::mt19937_64 rng_;
  std::vector<double> system_cdf_, document_cdf_;
  std::vector<session> sessions_;
  std::priority_queue<event, std::vector<event>, std::greater<>> pending_;
  std::uint64_t seq_ = 0;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> ids_;
  std::uint64_t next_id_ = 0;
};

// One request as a line of Mooncake JSON (with the newline).
inline void write_jsonl(std::FILE* out, const trace_request& r) {
  std::fprintf(out, "{\"timestamp\": %llu, \"input_length\": %llu, \"output_length\": %llu, ",
               static_cast<unsigned long long>(r.timestamp_ms),
               static_cast<unsigned long long>(r.input_length),
               static_cast<unsigned long long>(r.output_length));
  std::fputs("\"hash_ids\": [", out);
  for (std::size_t i = 0; i < r.hash_ids.size(); ++i) {
    std::fprintf(out, i == 0 ? "%llu" : ", %llu", static_cast<unsigned long long>(r.hash_ids[i]));
  }
  std::fputs("]}\n", out);
}

// Requests as the text of a Mooncake JSON lines file.
inline std::string to_jsonl(const std::vector<trace_request>& trace) {
  char* buf = nullptr;
  std::size_t size = 0;
  std::FILE* f = ::open_memstream(&buf, &size);
  if (f == nullptr) throw std::bad_alloc();
  for (const auto& r : trace) write_jsonl(f, r);
  std::fclose(f);
  std::string text(buf, size);
  std::free(buf);
  return text;
}

}  // namespace kvc_trace
