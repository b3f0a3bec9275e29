"""Byte-level exchanges with the official UNICORE TSI 11.2.1, copied from tsi-protocol.md §6.

Each request is paired with the reply the official TSI sent.  The tests replay them against
the protocol parser and (with the paths rewritten) against our agent.
"""

JOB = "/data/jobs/job-1795316720875"

PING = (b"#TSI_PING\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
        b"TSI_OK\n11.2.1\nENDOFMESSAGE\n")

MKDIR = (
    b"#!/bin/bash\n#TSI_EXECUTESCRIPT\n#TSI_SCRIPT\nmkdir -p /data/jobs/job-1795316720875 && "
    b"echo created /data/jobs/job-1795316720875\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\ncreated /data/jobs/job-1795316720875\n\nENDOFMESSAGE\n",
)

PUT_INPUT = (
    b"#TSI_PUTFILECHUNK\n#TSI_FILESACTION 0\n#TSI_FILE /data/jobs/job-1795316720875/input.txt "
    b"644\n#TSI_LENGTH 13\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\nENDOFMESSAGE\n",
)
PUT_INPUT_DATA = b"staged input\n"
PUT_INPUT_SECOND = b"ENDOFMESSAGE\n"

SUBMIT = (
    b"#!/bin/bash\n#TSI_SUBMIT\n\n#TSI_OUTCOME_DIR /data/jobs/job-1795316720875\n"
    b"#TSI_USPACE_DIR /data/jobs/job-1795316720875\n#TSI_STDOUT stdout\n#TSI_STDERR stderr\n"
    b"#TSI_JOBNAME probe\n#TSI_EMAIL NONE\n#TSI_TIME 60\n#TSI_NODES -1\n"
    b"#TSI_PROCESSORS_PER_NODE -1\n#TSI_TOTAL_PROCESSORS -1\n#TSI_QUEUE NONE\n#TSI_SCRIPT\n"
    b'UC_WORKING_DIRECTORY="/data/jobs/job-1795316720875"; export UC_WORKING_DIRECTORY\n'
    b'UC_OUTPUT_DIRECTORY="/data/jobs/job-1795316720875"; export UC_OUTPUT_DIRECTORY\n'
    b"cd ${UC_WORKING_DIRECTORY}\nrm -f ${UC_OUTPUT_DIRECTORY}/UNICORE_SCRIPT_EXIT_CODE\n"
    b"cat input.txt > /dev/null\necho hello > out.txt\nsleep 2\n"
    b"echo $? > ${UC_OUTPUT_DIRECTORY}/UNICORE_SCRIPT_EXIT_CODE\n\n"
    b"#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\n1768916720988\nENDOFMESSAGE\n",
)

STATUS_REQUEST = b"#TSI_GETSTATUSLISTING\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n"
STATUS_RUNNING = b"TSI_OK\nQSTAT\n 1768916720988 RUNNING NOBATCH S\n\nENDOFMESSAGE\n"
STATUS_EMPTY = b"TSI_OK\nQSTAT\n\nENDOFMESSAGE\n"

GET_EXIT_CODE = (
    b"#TSI_GETFILECHUNK\n#TSI_FILE /data/jobs/job-1795316720875/UNICORE_SCRIPT_EXIT_CODE\n"
    b"#TSI_START 0\n#TSI_LENGTH 64\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\nTSI_LENGTH 2\nENDOFMESSAGE\n",
)
GET_EXIT_CODE_DATA = b"0\n"

LS_OUT = (
    b"#TSI_LS\n#TSI_LS_MODE A\n#TSI_FILE /data/jobs/job-1795316720875/out.txt\n\n"
    b"#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\nSTART_LISTING\n  RW O 6 1795316721 /data/jobs/job-1795316720875/out.txt\n"
    b"--rw-r--r-- nobody nogroup\nEND_LISTING\nENDOFMESSAGE\n",
)

GET_OUT = (
    b"#TSI_GETFILECHUNK\n#TSI_FILE /data/jobs/job-1795316720875/out.txt\n#TSI_START 0\n"
    b"#TSI_LENGTH 6\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_OK\nTSI_LENGTH 6\nENDOFMESSAGE\n",
)
GET_OUT_DATA = b"hello\n"

# selected replies from the extras, privileged and TLS runs
DF_REPLY = (b"TSI_OK\nSTART_DF\nTOTAL 270553174016\nFREE 85240963072\nUSER -1\nEND_DF\n"
            b"ENDOFMESSAGE\n")
USER_INFO_REPLY = (b"TSI_OK\nhome: /nonexistent\nstatus:  keyfile "
                   b"'/nonexistent/.ssh/authorized_keys': [Errno 2] No such file or directory: "
                   b"...\n\n\nENDOFMESSAGE\n")
HOLD_REPLY = b"TSI_OK\n\n\nENDOFMESSAGE\n"
ABORT_RUNNING_REPLY = b"TSI_OK\n\nENDOFMESSAGE\n"
UNKNOWN_COMMAND = (b"#TSI_NO_SUCH_THING\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
                   b"TSI_FAILED: Unknown #TSI_* command\nENDOFMESSAGE\n")
GET_MISSING_REPLY = (b"TSI_FAILED: [Errno 2] No such file or directory: '/data/.../nope.txt'\n"
                     b"ENDOFMESSAGE\n")
EXECUTE_EXIT_3 = (
    b"#!/bin/bash\n#TSI_EXECUTESCRIPT\n#TSI_SCRIPT\necho to-stdout; echo to-stderr >&2; exit 3\n"
    b"\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"TSI_FAILED: Command '#!/bin/bash:#TSI_EXECUTESCRIPT:#TSI_SCRIPT:echo to-stdout; echo "
    b"to-stderr >&2; exit 3::#TSI_IDENTITY nobody NONE::' failed with code 3: "
    b"to-stdout:to-stderr:\nENDOFMESSAGE\n",
)
PING_TRAILING_BLANK = (b"#TSI_PING \n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
                       b"TSI_FAILED: Unknown #TSI_* command\nENDOFMESSAGE\n")
NO_IDENTITY_REPLY = b"TSI_FAILED: No user/group info given\nENDOFMESSAGE\n"

#: The whole command-channel conversation of the probe run, in order.
CONVERSATION = [PING, MKDIR, PUT_INPUT, SUBMIT, (STATUS_REQUEST, STATUS_RUNNING),
                (STATUS_REQUEST, STATUS_EMPTY), GET_EXIT_CODE, LS_OUT, GET_OUT]

# --------------------------------------------------------------------------------------------
# Captured from a run of the official TSI's code itself (UNICORE-EU/tsi: TSI.py of 11.0.2 with
# the nobatch BSS/BSSCommon/IO modules of the code index; see docs/tsi-bridge.md, "Against the
# official UNICORE TSI"), driven by a raw client on 127.0.0.1.  These handlers answer WITHOUT
# the TSI_OK line: the payload comes first.
OFFICIAL_JOB = "/tmp/unicore-tsi/work/capture-1795995814"

OFFICIAL_SUBMIT = (
    b"#!/bin/bash\n#TSI_SUBMIT\n\n#TSI_OUTCOME_DIR /tmp/unicore-tsi/work/capture-1795995814\n"
    b"#TSI_USPACE_DIR /tmp/unicore-tsi/work/capture-1795995814\n#TSI_STDOUT stdout\n"
    b"#TSI_STDERR stderr\n#TSI_JOBNAME capture\n#TSI_EMAIL NONE\n#TSI_TIME 60\n#TSI_NODES -1\n"
    b"#TSI_PROCESSORS_PER_NODE -1\n#TSI_TOTAL_PROCESSORS -1\n#TSI_QUEUE NONE\n#TSI_SCRIPT\n"
    b"sleep 3\necho $? > UNICORE_SCRIPT_EXIT_CODE\n\n#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"1514595816099\nENDOFMESSAGE\n",
)
OFFICIAL_STATUS_RUNNING = b"QSTAT\n 1514595816099 RUNNING NOBATCH S\n\nENDOFMESSAGE\n"
OFFICIAL_STATUS_EMPTY = b"QSTAT\n\nENDOFMESSAGE\n"
OFFICIAL_LS = (
    b"#TSI_LS\n#TSI_LS_MODE A\n#TSI_FILE /tmp/unicore-tsi/work/capture-1795995814/in.txt\n\n"
    b"#TSI_IDENTITY nobody NONE\n\nENDOFMESSAGE\n",
    b"START_LISTING\n  RW O 6 1795995815 /tmp/unicore-tsi/work/capture-1795995814/in.txt\n"
    b"--rw-r--r-- nobody nogroup\nEND_LISTING\nENDOFMESSAGE\n",
)
OFFICIAL_LS_MISSING = b"START_LISTING\nEND_LISTING\nENDOFMESSAGE\n"
OFFICIAL_DF = (b"START_DF\nTOTAL 270553174016\nFREE 84550356992\nUSER -1\nEND_DF\n"
               b"ENDOFMESSAGE\n")
# the same run's tagged replies (the handlers of TSI.py and Connector.ok)
OFFICIAL_PING = b"TSI_OK\n11.0.2\nENDOFMESSAGE\n"
OFFICIAL_DETAILS = b"TSI_OK\nNo info available for job 1514595816099 \n\nENDOFMESSAGE\n"
