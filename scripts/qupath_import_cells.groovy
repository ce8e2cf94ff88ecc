/*
 * Import the cells of a slidecell run into the image open in QuPath (0.4 or later).
 *
 * In QuPath: open the slide the run was made from, then Automate -> Script editor, paste this
 * file, set RUN below to the run folder (or to a cells.geojson / cells.geojson.gz file) and Run.
 * The cells come in with their nuclei, classes and measurements (QuPath's own GeoJSON reader,
 * as File -> Import objects uses). Existing objects are kept; set CLEAR = true to remove the
 * image's detections first.
 */
import groovy.json.JsonSlurper
import java.nio.file.Files
import java.nio.file.Paths
import qupath.lib.io.PathIO

def RUN = '/path/to/slidecell-out'
def CLEAR = false

def path = Paths.get(RUN)
def runJson = null
if (Files.isDirectory(path)) {
    runJson = path.resolve('run.json')
    def found = ['cells.geojson', 'cells.geojson.gz'].collect { path.resolve(it) }.findAll { Files.exists(it) }
    if (found.isEmpty())
        throw new IllegalArgumentException("No cells.geojson or cells.geojson.gz in ${RUN}")
    path = found[0]
} else {
    runJson = path.resolveSibling('run.json')
}

def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException('Open the slide the run was made from first')

// the run records the slide's size: refuse to place cells on another image
if (Files.exists(runJson)) {
    def run = new JsonSlurper().parse(runJson.toFile())
    def dims = run.reader?.dimensions
    def server = imageData.getServer()
    if (dims != null && (dims[0] != server.getWidth() || dims[1] != server.getHeight()))
        throw new IllegalStateException("The run was made on a ${dims[0]} x ${dims[1]} image (${run.slide}); " +
                "this one is ${server.getWidth()} x ${server.getHeight()}")
}

def objects = PathIO.readObjects(path)
if (CLEAR)
    clearDetections()
addObjects(objects)
fireHierarchyUpdate()
println "Imported ${objects.size()} objects from ${path}"
