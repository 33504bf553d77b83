#!/usr/bin/env bash
# The flow upload API reference's "Complete upload workflow", runnable against flowengine.
#
#   FLOWENGINE_URL=http://127.0.0.1:1234 INPUT_FILE=photo.jpg examples/upload-workflow.sh
#
# Same steps as the reference: start a flow with an inline definition, PUT the file to the
# presigned URL, poll until the run ends. Beyond host and port it only adds what a script run
# unattended needs: settings from the environment, failing loudly on a missing file (exit status 2)
# or a rejected request, and exit status 1 with the error when the run ends in ERROR.
#
# Settings (environment):
#   FLOWENGINE_URL   the engine (default http://127.0.0.1:1234)
#   INPUT_FILE       the file to upload (default input-image.jpg, as in the reference)
#   CONTENT_TYPE     its MIME type (default image/jpeg)
#   FLOW_DEFINITION  the {"Flow": {...}} body to post (default: flow-definition.json beside this script)
#   FLOW_NAME        the name in the start URL; the inline flow takes it (default test)
set -euo pipefail

FLOWENGINE_URL=${FLOWENGINE_URL:-http://127.0.0.1:1234}
INPUT_FILE=${INPUT_FILE:-input-image.jpg}
CONTENT_TYPE=${CONTENT_TYPE:-image/jpeg}
FLOW_DEFINITION=${FLOW_DEFINITION:-$(dirname "$0")/flow-definition.json}
FLOW_NAME=${FLOW_NAME:-test}

# curl sends an empty body for a file it cannot open (and only warns): check both files before a
# run exists, so a typo fails here instead of uploading 0 bytes.
require_file() { # $1: the setting, $2: its value
  if [ ! -f "$2" ] || [ ! -r "$2" ]; then
    echo "error: $1=$2: no such file (or not readable)" >&2
    exit 2
  fi
}
require_file INPUT_FILE "$INPUT_FILE"
require_file FLOW_DEFINITION "$FLOW_DEFINITION"

# 1. Start a flow
# (-sS: no progress meter in the captured output, but errors still shown.)
RUN_RESPONSE=$(curl -sS -X POST "$FLOWENGINE_URL/api/v1/flow/$FLOW_NAME" \
  -H "Content-Type: application/json" \
  -d @"$FLOW_DEFINITION")

RUN_ID=$(echo "$RUN_RESPONSE" | jq -r '.ID')
STATUS=$(echo "$RUN_RESPONSE" | jq -r '.Status')

# A refused start (an invalid flow, say) answers with an error body and no ID.
if [ "$RUN_ID" = "null" ]; then
  echo "Flow not started:" >&2
  echo "$RUN_RESPONSE" | jq . >&2
  exit 1
fi
echo "Run $RUN_ID is $STATUS"

# 2. Check if upload is needed
if [ "$STATUS" = "WAITING" ]; then
  # 3. Extract presigned URL
  UPLOAD_URL=$(echo "$RUN_RESPONSE" | jq -r '.WaitingURLs[0].PutURL')

  # 4. Upload the file
  # (--fail-with-body: a refused upload, e.g. 415 for a type the well does not accept, stops
  # the script with the engine's reason instead of polling a run that keeps waiting.)
  if ! curl -sS --fail-with-body -X PUT "$UPLOAD_URL" \
    -H "Content-Type: $CONTENT_TYPE" \
    --data-binary @"$INPUT_FILE"; then
    echo >&2
    echo "Upload failed; run $RUN_ID is still waiting for it" >&2
    exit 1
  fi

  echo "File uploaded successfully"
fi

# 5. Poll for completion
while true; do
  RUN_STATUS=$(curl -sS --fail-with-body "$FLOWENGINE_URL/api/v1/flow/status/$RUN_ID")
  STATUS=$(echo "$RUN_STATUS" | jq -r '.Status')

  if [ "$STATUS" = "COMPLETE" ]; then
    echo "Flow completed successfully"
    # Where to fetch each object of the run (inputs and outputs), valid until .Expires.
    echo "$RUN_STATUS" | jq -r '.Artifacts[] | "\(.EdgeName): \(.GetURL)"'
    break
  elif [ "$STATUS" = "ERROR" ] || [ "$STATUS" = "STOPPED" ]; then
    echo "Flow failed: $(echo "$RUN_STATUS" | jq -r '.Error // "no reason given"')" >&2
    # The failing step's last lines of output, when a step failed.
    echo "$RUN_STATUS" | jq -r '.Logs // [] | .[] | "  | \(.)"' >&2
    exit 1
  fi

  sleep 2
done
