#!/bin/sh
# Sum the "value" fields of the JSON objects given on standard input.
exec jq -s 'map(.value) | add'
