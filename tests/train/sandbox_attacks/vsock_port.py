"""A program (run_python) that opens a vsock socket and holds a port: vsock ignores network
namespaces, and on a VM its port space is the machine's, shared with the host and every other run
(a taken port is a bit another run reads with bind()). The driver sets PORT and, while the program
sleeps, tries to bind the same port outside the sandbox."""

import socket
import time

PORT = 0  # set by the driver

s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
s.bind((socket.VMADDR_CID_ANY, PORT))
s.listen(1)
print("bound", s.getsockname(), flush=True)
time.sleep(1.5)
