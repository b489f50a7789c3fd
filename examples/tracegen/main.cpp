// kvc-tracegen: writes a synthetic KV-cache trace in the Mooncake format (JSON lines) — chat
// sessions that extend their history, RAG requests over a Zipf-popular corpus, agent loops,
// shared system prompts — for the trace replayer, the demo and CI. The same options and seed
// give the same file. The workload model: examples/trace/generator.hpp.
//
//   kvc-tracegen --requests 2000 --seed 7 --output trace.jsonl
//   kvc-tracegen --duration 600 --rate 5 --rag-share 0.8 > rag.jsonl
//
// Exit status: 0, or 1 with a message for invalid options or an unwritable output.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/cli_checks.hpp"
#include "trace/generator.hpp"

int main(int argc, char** argv) {
  kvc_trace::generator_config c;
  std::string output = "-";
  CLI::App app("kvc-tracegen: a synthetic KV-cache trace in the Mooncake format (JSON lines)");
  app.add_option("-o,--output", output, "where to write ('-': standard output)")
      ->capture_default_str();
  app.add_option("--seed", c.seed, "random seed")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--requests", c.requests, "stop after this many requests (0: no limit)")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--duration", c.duration_s,
                 "stop new sessions after this many seconds (0: no limit)")
      ->capture_default_str();
  app.add_option("--rate", c.rate, "new sessions per second (Poisson)")->capture_default_str();
  app.add_option("--block-tokens", c.block_tokens, "tokens per block (one hash id each)")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--chat-share", c.chat_share, "weight of chat sessions")->capture_default_str();
  app.add_option("--rag-share", c.rag_share, "weight of RAG requests")->capture_default_str();
  app.add_option("--agent-share", c.agent_share, "weight of agent loops")->capture_default_str();
  app.add_option("--system-prompts", c.system_prompts, "distinct shared system prompts")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--system-zipf", c.system_zipf, "Zipf exponent of system prompt popularity")
      ->capture_default_str();
  app.add_option("--system-tokens", c.system_tokens, "tokens of a system prompt")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--turns", c.turns, "mean turns of a chat session")->capture_default_str();
  app.add_option("--user-tokens", c.user_tokens, "mean tokens of a user message")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--answer-tokens", c.answer_tokens, "mean tokens of an answer")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--think", c.think_s, "mean seconds between turns")->capture_default_str();
  app.add_option("--documents", c.documents, "RAG corpus size")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--document-zipf", c.document_zipf, "Zipf exponent of document popularity")
      ->capture_default_str();
  app.add_option("--document-tokens", c.document_tokens, "tokens of a document")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--rag-documents", c.rag_documents, "documents per RAG request")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--question-tokens", c.question_tokens, "mean tokens of a RAG question")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--tool-sets", c.tool_sets, "distinct agent tool definitions")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--tool-tokens", c.tool_tokens, "tokens of a tool definition")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--task-tokens", c.task_tokens, "mean tokens of an agent's task")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--steps", c.steps, "mean steps of an agent loop")->capture_default_str();
  app.add_option("--step-tokens", c.step_tokens, "mean tokens of an action or observation")
      ->check(kvc_examples::decimal_count)
      ->capture_default_str();
  app.add_option("--step-time", c.step_s, "mean seconds between agent steps")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto gen = kvc_trace::generator::create(c);
  if (!gen) {
    std::fprintf(stderr, "kvc-tracegen: %s\n", gen.message().c_str());
    return 1;
  }
  std::FILE* out = output == "-" ? stdout : std::fopen(output.c_str(), "w");
  if (out == nullptr) {
    std::fprintf(stderr, "kvc-tracegen: cannot write %s: %s\n", output.c_str(),
                 std::strerror(errno));
    return 1;
  }
  gen->run([&](const kvc_trace::trace_request& r) { kvc_trace::write_jsonl(out, r); });
  const bool failed = std::ferror(out) != 0;
  const bool closed = out == stdout ? std::fflush(out) == 0 : std::fclose(out) == 0;
  if (failed || !closed) {
    std::fprintf(stderr, "kvc-tracegen: writing %s failed\n", output.c_str());
    return 1;
  }
  return 0;
}
