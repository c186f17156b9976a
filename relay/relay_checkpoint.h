/* The relay's checkpoint (relay_checkpoint.c): load, apply, write. Included only by the
 * relay's own files. */
#ifndef RELAY_RELAY_CHECKPOINT_H
#define RELAY_RELAY_CHECKPOINT_H

struct loop;
struct relay;
struct segment;

/* Loads state_dir/checkpoint (set aside first with --reset-offsets); an error when it
 * belongs to another spool. */
char *relay_checkpoint_load(struct relay *r);
/* spool_events.added (ctx: the struct relay): the checkpoint's entry for a new segment. */
void relay_checkpoint_segment_added(void *ctx, struct segment *seg);
/* Writes every segment's committed offset; a failure is counted and tried again. */
void relay_checkpoint_write(struct relay *r);
/* The checkpoint interval's timer: writes when offsets moved. */
void relay_checkpoint_timer(struct loop *loop, void *arg);

#endif
