package relay

import "syscall"

const syscallEMFILE = syscall.EMFILE
