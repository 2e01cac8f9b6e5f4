/* Stream a reply through the C ABI and cancel a second one from another thread.
 * Build and run: bindings/examples/c/run.sh [MODEL_DIR] */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "setblock.h"

static int on_event(void *user_data, const sb_event *ev) {
  int *blocks = (int *)user_data;
  if (ev->kind == SB_EVENT_BLOCK) {
    fputs(ev->text, stdout);
    fflush(stdout);
    (*blocks)++;
  } else if (ev->kind == SB_EVENT_FINISHED) {
    printf("\n[%u tokens in %u forwards, stop %d]\n", ev->stats.generated_tokens, ev->stats.forward_passes,
           ev->stats.stop_reason);
  }
  return 0;
}

static void *cancel_soon(void *session) {
  struct timespec ts = {0, 3 * 1000 * 1000};
  nanosleep(&ts, NULL);
  sb_session_cancel((sb_session *)session);
  return NULL;
}

static int check(sb_status st, const char *what) {
  if (st != SB_OK) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)st, sb_last_error());
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "models/demo";
  const char *prompt = argc > 2 ? argv[2] : "sort 42 17 88 17 30 61";
  sb_model *model = NULL;
  sb_session *session = NULL;
  if (check(sb_model_load(dir, NULL, &model), "sb_model_load")) return 1;
  if (check(sb_session_new(model, &session), "sb_session_new")) return 1;

  sb_generate_options opts = sb_generate_options_default();
  opts.max_new_tokens = 48;
  int blocks = 0;
  sb_stats stats;
  char *text = NULL;
  if (check(sb_generate(session, prompt, &opts, on_event, &blocks, &stats, &text), "sb_generate")) return 1;
  printf("text: %s\nblocks: %d, tokens/forward %.2f\n", text, blocks, stats.tokens_per_forward);
  sb_string_free(text);

  /* auto: per block, NTP or the block size with the best expected tokens/s on this device */
  sb_session_reset(session);
  opts.mode = SB_MODE_AUTO;
  blocks = 0;
  if (check(sb_generate(session, prompt, &opts, NULL, NULL, &stats, NULL), "sb_generate (auto)")) return 1;
  printf("auto: %u tokens in %u forwards\n", (unsigned)stats.generated_tokens, (unsigned)stats.forward_passes);
  opts.mode = SB_MODE_SBD;

  /* errors are codes + messages, never crashes */
  sb_generate_options bad = sb_generate_options_default();
  bad.block_size = 1000;
  if (sb_generate(session, prompt, &bad, NULL, NULL, NULL, NULL) != SB_ERR_OPTION) return 1;
  printf("bad option -> %s\n", sb_last_error());

  /* cancel from another thread while generating (stop 3 = cancelled) */
  sb_session_reset(session);
  opts.max_new_tokens = 100;
  opts.gamma = 0.0;
  pthread_t t;
  pthread_create(&t, NULL, cancel_soon, session);
  blocks = 0;
  if (check(sb_generate(session, prompt, &opts, on_event, &blocks, &stats, NULL), "sb_generate")) return 1;
  pthread_join(t, NULL);

  sb_session_free(session);
  if (sb_session_free(session) != SB_ERR_INVALID_HANDLE) return 1;
  printf("double free -> %s\n", sb_last_error());
  sb_model_free(model);
  return 0;
}
