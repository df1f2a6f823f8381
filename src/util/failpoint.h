/* failpoint.h - stalls on request, to test that a stuck rank cannot hang the job.
 *
 * DDTRAIN_DEBUG_STALL=POINT:RANK[:SECONDS] makes rank RANK sleep SECONDS (default 3600) when
 * it reaches the named point, as a rank stuck on a hung file system or a stopped process
 * would: the other ranks must then end the job within --comm-timeout, naming it. Points:
 * "setup", "evaluation", "checkpoint", "step". Unset (the normal case), failpoint_stall()
 * costs a getenv() the first time and a branch after.
 *
 * Usage:
 *     failpoint_stall("checkpoint", rank);
 */
#ifndef DDT_UTIL_FAILPOINT_H
#define DDT_UTIL_FAILPOINT_H

void failpoint_stall(const char *point, int rank);

#endif
