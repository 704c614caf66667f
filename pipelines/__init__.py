"""Task pipelines (installed as ``medcnn.pipelines``): thin compositions of medcnn parts."""
