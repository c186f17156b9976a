/* kumo-nats-relay deadletter replay: hands the dead letters back to the relay once the
 * operator fixed their cause. The records of state_dir/deadletter/deadletter.jsonl written
 * since the last replay become one done plain segment in the (first) spool directory,
 * which the running relay reads like any other, through the policy again; its name is new,
 * so its message ids are too. state_dir/deadletter/replayed remembers how far the file was
 * replayed, so the running relay can keep appending to it and nothing is replayed twice.
 * Run it as a user that can write the spool (root): the relay itself cannot. */
#ifndef RELAY_REPLAY_H
#define RELAY_REPLAY_H

struct config;

/* Returns the exit status: 0, or 1 after printing why on stderr. */
int replay_deadletters(const struct config *cfg);

#endif
