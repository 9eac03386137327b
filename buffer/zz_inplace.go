package buffer

import (
	"os"
	"path/filepath"
)

var scratchInPlace bool
var scratchSeq uint64
var scratchFile *os.File

func writeCheckpointInPlace(dir string, c checkpoint) error {
	if scratchFile == nil {
		f, err := os.OpenFile(filepath.Join(dir, "ckp2"), os.O_RDWR|os.O_CREATE, 0o640)
		if err != nil {
			return err
		}
		f.WriteAt(make([]byte, 8192), 0)
		f.Sync()
		syncDir(dir)
		scratchFile = f
	}
	scratchSeq++
	if _, err := scratchFile.WriteAt(c.encode(), int64(scratchSeq%2)*4096); err != nil {
		return err
	}
	return datasync(scratchFile)
}
