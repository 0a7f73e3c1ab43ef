from ruv_assets.cli import main
import sys
sys.exit(main())
