#!/bin/sh
# A sample callback: reads the job's JSON from stdin and pretends to send an e-mail.
# Exit 0: done. Exit 75: try again later. Exit 76: not yet. Anything else: failed for good.
params=$(cat)
echo "job $BGQ_JOB_ID (attempt $BGQ_ATTEMPT): sending e-mail with $params"
exit 0
